"""Planner benchmark: a generated 1,000-node x 8-GPU cluster with 20 services, and the 16-node production site.

    .venv/bin/python bench/bench_planner.py [--nodes 1000] [--gpus 8] [--runs 7]

Everything is in memory (no host is contacted). Reported: the best and the median of
--runs calls of `gpufleet.planner.plan` (time.perf_counter), then the same for
`plan(...).to_dict()` (what the CLI and the Ansible plugin consume). Target: plan() <= 1 s
for 1,000 nodes. Results go in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

from gpufleet.catalog import load_catalog
from gpufleet.inventory import cluster_from_hostvars, load_cluster
from gpufleet.planner import plan
from gpufleet.strategy import load_strategy, parse_strategy

ROOT = Path(__file__).resolve().parents[1]
POOLS = ("general",) * 6 + ("med",) * 2 + ("cxr", "batch")   # 60% / 20% / 10% / 10% of the nodes
ZONES = ("a", "b", "c", "d")


def generated_cluster(nodes: int, gpus: int, memory_mib: int = 81920):
    """node-0 is the head; node-i is in pool POOLS[i % 10] and zone ZONES[i % 4]."""
    names = [f"node-{i}" for i in range(nodes)]
    hostvars = {
        name: {"gpufleet_gpus": {"count": gpus, "model": "H100", "memory_mib": memory_mib},
               "ansible_host": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
               "gpufleet_node_labels": {"gpufleet.io/pool": POOLS[i % len(POOLS)],
                                        "gpufleet.io/zone": ZONES[i % len(ZONES)]}}
        for i, name in enumerate(names)}
    groups = {"ray_head": names[:1], "ray_workers": names[1:]}
    return cluster_from_hostvars(groups, hostvars, f"generated-{nodes}x{gpus}")


def _vllm(name, model, tp, util, replicas, selector=None, **args):
    return {"name": name, "model": model, "engine": "vllm",
            "engine_args": {"tensor_parallel_size": tp, "gpu_memory_utilization": util, "max_model_len": 8192,
                            "enforce_eager": True, **args},
            "replicas": replicas, "placement": {"label_selector": selector or {}},
            "route": {"model_name": name}}


def twenty_services() -> dict:
    g27, g4, cxr = "google/medgemma-27b-it", "google/medgemma-4b-it", "nvidia/NV-Reason-CXR-3B"
    q06, q14 = "Qwen/Qwen3-0.6B", "Qwen/Qwen3-14B"
    auto = lambda low, high: {"min": low, "max": high, "target_ongoing_requests": 5}  # noqa: E731
    services = [
        _vllm("chat-27b-tp4", g27, 4, 0.90, auto(50, 2000), {"gpufleet.io/pool": "in(general,med)"}),
        _vllm("chat-27b-tp8", g27, 8, 0.90, auto(10, 60), {"gpufleet.io/pool": "med"}),
        _vllm("chat-27b-tp2", g27, 2, 0.90, auto(20, 200), {"gpufleet.io/pool": "general", "gpufleet.io/zone": "a"}),
        _vllm("chat-27b-zone-d", g27, 4, 0.90, auto(1, 100), {"gpufleet.io/zone": "d", "gpufleet.io/pool": "!med"}),
        _vllm("med-4b-tp1", g4, 1, 0.45, auto(20, 400), {"gpufleet.io/pool": "!batch"}),
        _vllm("med-4b-tp2", g4, 2, 0.90, 40, {"gpufleet.io/pool": "med"}),
        _vllm("med-4b-tp4", g4, 4, 0.90, auto(2, 50), {"gpufleet.io/pool": "in(med,cxr)"}),
        _vllm("cxr-3b-tp1", cxr, 1, 0.30, 50, {"gpufleet.io/pool": "cxr"}),
        _vllm("cxr-3b-tp2", cxr, 2, 0.45, auto(10, 200), {"gpufleet.io/pool": "cxr"}),
        _vllm("cxr-3b-tp4", cxr, 4, 0.90, auto(1, 30), {"gpufleet.io/pool": "cxr"}),
        _vllm("qwen-0-6b-a", q06, 1, 0.30, auto(10, 30000)),   # more than fits: saturates the cluster
        _vllm("qwen-0-6b-b", q06, 1, 0.30, 100, {"gpufleet.io/zone": "b"}),
        _vllm("qwen-14b-tp1", q14, 1, 0.90, auto(5, 300), {"gpufleet.io/pool": "batch"}),
        _vllm("qwen-14b-tp2", q14, 2, 0.90, auto(5, 100), {"gpufleet.io/pool": "general", "gpufleet.io/zone": "c"}),
        _vllm("qwen-14b-tp4", q14, 4, 0.90, 8, {"gpufleet.io/host": "in(node-10,node-11,node-12,node-13)"}),
        _vllm("qwen-14b-tp8", q14, 8, 0.90, auto(1, 20), {"gpufleet.io/pool": "batch"}),
        _vllm("smol-tp1", "HuggingFaceTB/SmolLM2-135M-Instruct", 1, 0.10, 200, {"gpufleet.io/pool": "!cxr"}),
        _vllm("embed", "sentence-transformers/all-MiniLM-L6-v2", 1, 0.10, 100, dtype="float32", max_model_len=256),
        {"name": "ollama-4b", "model": "medgemma-4b-it:q8", "engine": "ollama",
         "placement": {"host": "node-0", "gpus": [7]}, "route": {"model_name": "ollama-4b"}},
        {"name": "ollama-27b", "model": "medgemma-27b-it:q8", "engine": "ollama",
         "placement": {"host": "node-1", "gpus": [6, 7]}, "route": {"model_name": "ollama-27b"}},
    ]
    return {"name": "bench-20", "description": "20 services, TP 1/2/4/8, selectors, autoscaling", "services": services}


def timed(function, runs: int) -> tuple[float, float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def report(title: str, cluster, catalog, strategy, runs: int) -> float:
    best, median, result = timed(lambda: plan(cluster, catalog, strategy), runs)
    best_dict, median_dict, data = timed(lambda: plan(cluster, catalog, strategy).to_dict(), runs)
    gpus = sum(n.gpu_count for n in cluster.nodes)
    replicas = sum(len(s["placements"]) for s in data["services"])
    print(f"{title}: {len(cluster.nodes)} nodes, {gpus} GPUs, {len(strategy.services)} services, "
          f"{replicas} replicas placed, {len(result.errors)} errors, {len(result.warnings)} warnings")
    print(f"  plan()            best {best * 1000:8.1f} ms   median {median * 1000:8.1f} ms   ({runs} runs)")
    print(f"  plan().to_dict()  best {best_dict * 1000:8.1f} ms   median {median_dict * 1000:8.1f} ms")
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--target", type=float, default=1.0, help="seconds plan() may take on the big cluster")
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or platform.system()})")
    catalog = load_catalog()

    start = time.perf_counter()
    cluster = generated_cluster(args.nodes, args.gpus)
    strategy = parse_strategy(twenty_services(), "bench-20 (generated)")
    print(f"generating the cluster and strategy: {(time.perf_counter() - start) * 1000:.1f} ms (not counted)")
    big = report("generated", cluster, catalog, strategy, args.runs)

    production = load_cluster(str(ROOT / "inventory" / "production"))   # reading the inventory is not counted
    report("production baseline", production, catalog, load_strategy("baseline", str(ROOT / "strategies")), args.runs)
    report("production dedicated-node0", production, catalog,
           load_strategy("dedicated-node0", str(ROOT / "strategies")), args.runs)

    verdict = "OK" if big <= args.target else "SLOWER THAN TARGET"
    print(f"target plan() <= {args.target:.2f} s on {args.nodes} nodes: {verdict} (best {big:.3f} s)")
    return 0 if big <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
