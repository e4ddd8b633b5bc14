"""Planner benchmark: its growth with the cluster (100 to 10,000 nodes x 8 GPUs) and the strategy (20 to 200 services).

    .venv/bin/python bench/bench_planner.py                  # the growth table, then the production site
    .venv/bin/python bench/bench_planner.py --baseline /tmp/before/src   # the same cases on another source tree
    .venv/bin/python bench/bench_planner.py --nodes 1000 --services 20   # one case

Everything is in memory (no host is contacted). Each case is a generated cluster (`generated_cluster`)
and a generated strategy (`services`: 20 services, or 10 copies of them for 200). Reported: the best
and the median of --runs calls of `gpufleet.planner.plan` (time.perf_counter), then the same for
`plan(...).to_dict()` (what the CLI and the Ansible plugin consume). With --baseline, every case also
runs in a child process whose PYTHONPATH is that source tree (for example a git worktree of an older
commit), and the table gives the ratio now/baseline. Target: plan() <= 1 s for 10,000 nodes x 8 GPUs
x 200 services (exit 1 when slower). Results go in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
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


def twenty_services(copy: int = 0) -> list:
    """The 20 services; copy k > 0 renames them (suffix -k) and pins its Ollama and host-selected
    services to other nodes (node-60+2k, node-61+2k; node-20+4k..23+4k), so no two copies pin one GPU."""
    g27, g4, cxr = "google/medgemma-27b-it", "google/medgemma-4b-it", "nvidia/NV-Reason-CXR-3B"
    q06, q14 = "Qwen/Qwen3-0.6B", "Qwen/Qwen3-14B"
    auto = lambda low, high: {"min": low, "max": high, "target_ongoing_requests": 5}  # noqa: E731
    hosts = ",".join(f"node-{(20 + 4 * copy if copy else 10) + i}" for i in range(4))
    ollama = (60 + 2 * copy) if copy else 0
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
        # more than fits on 1,000 nodes (at most 10,000: strategy.MAX_REPLICAS): saturates the cluster
        _vllm("qwen-0-6b-a", q06, 1, 0.30, auto(10, 10000)),
        _vllm("qwen-0-6b-b", q06, 1, 0.30, 100, {"gpufleet.io/zone": "b"}),
        _vllm("qwen-14b-tp1", q14, 1, 0.90, auto(5, 300), {"gpufleet.io/pool": "batch"}),
        _vllm("qwen-14b-tp2", q14, 2, 0.90, auto(5, 100), {"gpufleet.io/pool": "general", "gpufleet.io/zone": "c"}),
        _vllm("qwen-14b-tp4", q14, 4, 0.90, 8, {"gpufleet.io/host": f"in({hosts})"}),
        _vllm("qwen-14b-tp8", q14, 8, 0.90, auto(1, 20), {"gpufleet.io/pool": "batch"}),
        _vllm("smol-tp1", "HuggingFaceTB/SmolLM2-135M-Instruct", 1, 0.10, 200, {"gpufleet.io/pool": "!cxr"}),
        _vllm("embed", "sentence-transformers/all-MiniLM-L6-v2", 1, 0.10, 100, dtype="float32", max_model_len=256),
        {"name": "ollama-4b", "model": "medgemma-4b-it:q8", "engine": "ollama",
         "placement": {"host": f"node-{ollama}", "gpus": [7]}, "route": {"model_name": "ollama-4b"}},
        {"name": "ollama-27b", "model": "medgemma-27b-it:q8", "engine": "ollama",
         "placement": {"host": f"node-{ollama + 1}", "gpus": [6, 7]}, "route": {"model_name": "ollama-27b"}},
    ]
    if copy:
        for service in services:
            service["name"] += f"-{copy}"
            service["route"] = {"model_name": service["route"]["model_name"] + f"-{copy}"}
    return services


def services(count: int = 20) -> dict:
    """`count` (a multiple of 20) services: twenty_services() and count/20 - 1 renamed copies."""
    if count % 20 or not 20 <= count <= 200:
        raise SystemExit(f"--services must be 20, 40, ... 200, not {count}")
    listed = [s for copy in range(count // 20) for s in twenty_services(copy)]
    return {"name": f"bench-{count}", "description": f"{count} services, TP 1/2/4/8, selectors, autoscaling",
            "services": listed}


def case(nodes: int, count: int, gpus: int = 8):
    """The cluster and the parsed strategy of one benchmark case."""
    return generated_cluster(nodes, gpus), parse_strategy(services(count), f"bench-{count} (generated)")


def timed(function, runs: int, patience: float = 5.0, cpu: list | None = None) -> tuple[float, float, object, int]:
    """(best, median, last result, runs made) of the wall time: stops early once a run has taken `patience`
    seconds. CPU, when given, receives each run's processor time (time.process_time: a busy machine
    stretches the wall time, hardly this)."""
    times, result = [], None
    for _ in range(runs):
        result = None
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
        if times[-1] > patience:
            break
    return min(times), statistics.median(times), result, len(times)


def digest(data: dict) -> str:
    """The plan's JSON, as the identity test compares it (sorted keys; the generated cases hold no path)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def measure(cluster, catalog, strategy, runs: int) -> dict:
    cpu: list = []
    best, median, result, made = timed(lambda: plan(cluster, catalog, strategy), runs, cpu=cpu)
    best_dict, median_dict, data, _ = timed(lambda: plan(cluster, catalog, strategy).to_dict(), max(1, min(runs, made)))
    return {"nodes": len(cluster.nodes), "gpus": sum(n.gpu_count for n in cluster.nodes),
            "digest": digest(data), "cpu_best": min(cpu), "cpu_median": statistics.median(cpu),
            "services": len(strategy.services), "replicas": sum(len(s["placements"]) for s in data["services"]),
            "errors": len(result.errors), "warnings": len(result.warnings), "runs": made,
            "plan_best": best, "plan_median": median, "dict_best": best_dict, "dict_median": median_dict}


def report(title: str, cluster, catalog, strategy, runs: int) -> float:
    m = measure(cluster, catalog, strategy, runs)
    print(f"{title}: {m['nodes']} nodes, {m['gpus']} GPUs, {m['services']} services, "
          f"{m['replicas']} replicas placed, {m['errors']} errors, {m['warnings']} warnings")
    print(f"  plan()            best {m['plan_best'] * 1000:8.1f} ms   median {m['plan_median'] * 1000:8.1f} ms   "
          f"({m['runs']} runs; CPU best {m['cpu_best'] * 1000:.1f} ms, median {m['cpu_median'] * 1000:.1f} ms)")
    print(f"  plan().to_dict()  best {m['dict_best'] * 1000:8.1f} ms   median {m['dict_median'] * 1000:8.1f} ms")
    return m["plan_best"]


def measure_case(nodes: int, count: int, runs: int) -> dict:
    cluster, strategy = case(nodes, count)
    return measure(cluster, load_catalog(), strategy, runs)


def baseline_case(source: str, nodes: int, count: int, runs: int) -> dict:
    """The same case planned by the gpufleet found in SOURCE (a src folder), in a child process."""
    import gpufleet

    env = {**os.environ, "PYTHONPATH": source}
    out = subprocess.run([sys.executable, __file__, "--measure", str(nodes), str(count), "--runs", str(runs)],
                         env=env, check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    if Path(data["module"]).resolve() == Path(gpufleet.__file__).resolve():
        raise SystemExit(f"--baseline {source}: the child imported this tree's gpufleet ({data['module']})")
    return data


def growth(args) -> int:
    catalog = load_catalog()
    rows, first = [], None
    for count in args.grid_services:
        for nodes in args.grid_nodes:
            start = time.perf_counter()
            cluster, strategy = case(nodes, count)
            built = time.perf_counter() - start
            m = measure(cluster, catalog, strategy, args.runs)
            base = baseline_case(args.baseline, nodes, count, args.runs) if args.baseline else None
            first = first or m
            rows.append((m, base))
            note = f"  (building the case: {built * 1000:.0f} ms, not counted)"
            print(f"{nodes:>6} nodes x {count:>3} services: plan() best {m['plan_best'] * 1000:8.1f} ms"
                  f" (CPU {m['cpu_best'] * 1000:7.1f} ms)" + (
                f", baseline {base['plan_best'] * 1000:9.1f} ms" if base else "") + note, flush=True)
    print()
    head = ("| nodes | GPUs | services | replicas placed | errors / warnings | `plan()` best | `plan()` median "
            "| `plan()` CPU best | `to_dict()` best | CPU / (100 nodes, 20 services) |")
    if args.baseline:
        head += " baseline `plan()` best | baseline CPU best | CPU now / baseline | same plan |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for m, base in rows:
        line = (f"| {m['nodes']:,} | {m['gpus']:,} | {m['services']} | {m['replicas']:,} | "
                f"{m['errors']} / {m['warnings']} | {m['plan_best'] * 1000:.1f} ms | {m['plan_median'] * 1000:.1f} ms "
                f"| {m['cpu_best'] * 1000:.1f} ms | {m['dict_best'] * 1000:.1f} ms "
                f"| {m['cpu_best'] / first['cpu_best']:.1f}x |")
        if base:
            line += (f" {base['plan_best'] * 1000:.1f} ms ({base['runs']} run(s)) | {base['cpu_best'] * 1000:.1f} ms | "
                     f"{m['cpu_best'] / base['cpu_best']:.3f} | "
                     f"{'yes' if base['digest'] == m['digest'] else 'NO: ' + base['digest']} |")
        print(line)
    big = next((m for m, _ in rows if (m["nodes"], m["services"]) == (10000, 200)), None)
    print()
    for title, name in (("production baseline", "baseline"), ("production dedicated-node0", "dedicated-node0")):
        production = load_cluster(str(ROOT / "inventory" / "production"))   # reading the inventory is not counted
        report(title, production, catalog, load_strategy(name, str(ROOT / "strategies")), max(args.runs, 7))
    if big is None:
        return 0
    verdict = "OK" if big["plan_best"] <= args.target else "SLOWER THAN TARGET"
    print(f"target plan() <= {args.target:.2f} s on 10,000 nodes x 8 GPUs x 200 services: {verdict} "
          f"(best {big['plan_best']:.3f} s wall, {big['cpu_best']:.3f} s CPU)")
    return 0 if big["plan_best"] <= args.target else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, help="one case: this many nodes (with --services)")
    parser.add_argument("--services", type=int, default=20, help="20, 40, ... 200")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5, help="calls per case (a case stops after a 5 s call)")
    parser.add_argument("--grid-nodes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--grid-services", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--baseline", metavar="SRC", help="also plan every case with the gpufleet in SRC")
    parser.add_argument("--target", type=float, default=1.0,
                        help="seconds plan() may take on 10,000 nodes x 200 services (or the --nodes case)")
    parser.add_argument("--measure", type=int, nargs=2, metavar=("NODES", "SERVICES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child of --baseline: one case, as JSON
        import gpufleet

        data = measure_case(*args.measure, args.runs)
        print(json.dumps({**data, "module": gpufleet.__file__}))
        return 0
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or platform.system()})")
    if args.nodes is None:
        return growth(args)
    catalog = load_catalog()
    start = time.perf_counter()
    cluster = generated_cluster(args.nodes, args.gpus)
    strategy = parse_strategy(services(args.services), f"bench-{args.services} (generated)")
    print(f"generating the cluster and strategy: {(time.perf_counter() - start) * 1000:.1f} ms (not counted)")
    big = report("generated", cluster, catalog, strategy, args.runs)
    verdict = "OK" if big <= args.target else "SLOWER THAN TARGET"
    print(f"target plan() <= {args.target:.2f} s on {args.nodes} nodes: {verdict} (best {big:.3f} s)")
    return 0 if big <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
