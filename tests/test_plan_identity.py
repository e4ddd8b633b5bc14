"""The planner's speed-ups change no plan: every plan here equals the one recorded before them.

Recorded plans (tests/data/plan_identity.json.gz) cover every strategy of strategies/ on every
inventory of inventory/ (the JSON of `gpufleet.api.plan_from_inventory`, compared whole), the
benchmark's generated clusters (bench/bench_planner.py) and 80 random clusters and strategies
(mixed GPU models and sizes, CPU-only nodes, selectors of every form, TP 1-8, fixed and autoscaled
replicas, Ollama pins, over-committed and invalid ones) - compared by digest, with a per-service
replica count to show where a plan moved.

Record again (only when a plan is meant to change; say why in the commit):

    PYTHONPATH=src .venv/bin/python tests/test_plan_identity.py --record

A case whose inputs changed since the recording (a strategy, inventory or catalog file edited)
fails with that reason (never skipped): re-record it with the command above.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import pytest

import gpufleet
from gpufleet.api import make_plan
from gpufleet.catalog import load_catalog
from gpufleet.errors import InputError
from gpufleet.inventory import cluster_from_hostvars, load_cluster
from gpufleet.planner import plan
from gpufleet.strategy import parse_strategy

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "tests" / "data" / "plan_identity.json.gz"
PACKAGE = str(Path(gpufleet.__file__).resolve().parent)
RANDOM_CASES = 80
BENCH_CASES = ((100, 20), (100, 200), (1000, 20))


def _normal(data) -> str:
    """The plan as canonical JSON, without this checkout's absolute paths."""
    text = json.dumps(data, sort_keys=True)
    return text.replace(PACKAGE, "<gpufleet>").replace(str(REPO), "<repo>")


def _summary(data) -> dict:
    if "input_error" in data:
        return {"input_error": data["input_error"]}
    return {"feasible": data["feasible"], "errors": sorted(e["code"] for e in data["errors"]),
            "warnings": len(data["warnings"]),
            "replicas": {s["name"]: len(s["placements"]) for s in data["services"]}}


# ---- the cases -----------------------------------------------------------------------------------

def repository_cases():
    """(name, thunk) for every inventory x strategy of the repository."""
    inventories = sorted(p for p in (REPO / "inventory").iterdir() if p.is_dir())
    strategies = sorted(p.stem for p in (REPO / "strategies").glob("*.yml"))
    clusters = {}

    def one(inventory: Path, strategy: str):
        def thunk():
            if inventory not in clusters:  # read once per inventory (plan_from_inventory reads it per call)
                clusters[inventory] = load_cluster(str(inventory))
            try:
                return make_plan(clusters[inventory], strategy, str(REPO / "strategies"))
            except InputError as exc:
                return {"input_error": str(exc)}
        return thunk
    return [(f"repo/{inv.name}/{name}", one(inv, name)) for inv in inventories for name in strategies]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_planner", REPO / "bench" / "bench_planner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_cases():
    bench = _bench()

    def one(nodes, count):
        def thunk():
            cluster, strategy = bench.case(nodes, count)
            return plan(cluster, load_catalog(), strategy).to_dict()
        return thunk
    return [(f"bench/{nodes}x8/{count}", one(nodes, count)) for nodes, count in BENCH_CASES]


GPUS = (("A10", 23028, None), ("A10", 23028, 512), ("H100", 81559, None), ("H100", 81920, 1826),
        ("L4", 23034, None), ("A100", 40960, 300))
HF_MODELS = ("google/medgemma-27b-it", "google/medgemma-4b-it", "nvidia/NV-Reason-CXR-3B", "Qwen/Qwen3-0.6B",
             "Qwen/Qwen3-14B", "HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2")
OLLAMA_MODELS = ("medgemma-4b-it:q8", "medgemma-27b-it:q8")
POOLS, ZONES = ("general", "med", "cxr", "batch"), ("a", "b", "c")


def _selector(r: random.Random, nodes: int) -> dict:
    selector = {}
    if r.random() < 0.5:
        pool = r.choice(POOLS)
        selector["gpufleet.io/pool"] = r.choice((pool, f"!{pool}", f"in({pool},{r.choice(POOLS)})",
                                                 f"!in({pool},{r.choice(POOLS)})"))
    if r.random() < 0.3:
        selector["gpufleet.io/zone"] = r.choice(ZONES)
    if r.random() < 0.15:
        hosts = sorted({f"node-{r.randrange(nodes)}" for _ in range(r.randint(1, 4))})
        selector["gpufleet.io/host"] = r.choice((f"in({','.join(hosts)})", f"!{hosts[0]}", hosts[0]))
    if r.random() < 0.1:
        selector["ray.io/accelerator-type"] = r.choice(("A10", "H100", "L4"))
    if r.random() < 0.05:
        selector["gpufleet.io/group"] = r.choice(("head", "worker"))
    return selector


def random_case(seed: int) -> dict:
    """A random cluster and strategy, planned (or the input error that refused them). Odd seeds are
    wild (any TP, utilisation, pin and route: mostly infeasible); even seeds mostly fit."""
    r = random.Random(seed)
    wild = seed % 2
    nodes = r.randint(1, 40)
    hostvars = {}
    for i in range(nodes):
        hv = {"ansible_host": f"10.1.{i // 256}.{i % 256}"}
        count = r.choice((0, 1, 2, 4, 4, 8, 8) if wild else (0, 4, 8, 8))
        if count:
            model, memory, reserved = r.choice(GPUS if wild else GPUS[2:4])
            hv["gpufleet_gpus"] = {"count": count, "model": model, "memory_mib": memory}
            if reserved is not None:
                hv["gpufleet_gpus"]["reserved_mib"] = reserved
        else:
            hv["gpufleet_gpus"] = {"count": 0}
            hv["gpufleet_cpu_memory_mib"] = r.choice((0, 16384, 65536))
        labels = {}
        if r.random() < 0.8:
            labels["gpufleet.io/pool"] = r.choice(POOLS)
        if r.random() < 0.6:
            labels["gpufleet.io/zone"] = r.choice(ZONES)
        if labels:
            hv["gpufleet_node_labels"] = labels
        hostvars[f"node-{i}"] = hv
    names = list(hostvars)
    groups = {"ray_head": names[:1], "ray_workers": names[1:]}
    services = []
    for j in range(r.randint(1, 25 if wild else max(1, min(12, nodes // 2)))):
        if wild and r.random() < 0.08:
            services.append({"name": f"ollama-{j}", "model": r.choice(OLLAMA_MODELS), "engine": "ollama",
                             "placement": {"host": f"node-{r.randrange(nodes)}",
                                           "gpus": sorted(r.sample(range(8), r.choice((1, 1, 2))))},
                             "route": {"model_name": f"ollama-{j}"}})
            continue
        model = r.choice(HF_MODELS)
        args = {"tensor_parallel_size": r.choice((1, 1, 1, 2, 2, 4, 8, 3)),
                "gpu_memory_utilization": r.choice((0.1, 0.2, 0.3, 0.45, 0.5, 0.85, 0.9, 0.95)),
                "max_model_len": r.choice((256, 512, 2048, 8192))}
        if not wild:
            big = "27b" in model or "14B" in model
            args = {"tensor_parallel_size": r.choice((2, 4)) if big else 1,
                    "gpu_memory_utilization": 0.9 if big else r.choice((0.3, 0.45, 0.9)),
                    "max_model_len": 256 if model.startswith("sentence") else r.choice((512, 2048))}
        if r.random() < 0.5:
            args["enforce_eager"] = True
        if r.random() < 0.1:
            args["kv_cache_dtype"] = "fp8"
        if model.startswith("sentence-transformers"):
            args["dtype"] = "float32"
        if r.random() < 0.1:
            args["max_num_seqs"] = r.choice((16, 64, 512))
        if not wild and r.random() < 0.5:
            replicas = 1
        elif r.random() < 0.5:
            replicas = r.randint(1, 12)
        else:
            low = r.randint(0, 6 if wild else 1)
            replicas = {"min": low, "max": low + r.randint(1, 300), "target_ongoing_requests": 4}
        placement = {"label_selector": _selector(r, nodes) if wild or r.random() < 0.3 else {}}
        if wild and r.random() < 0.05:
            placement["host"] = f"node-{r.randrange(nodes)}"
        services.append({"name": f"svc-{j}", "model": model, "engine": "vllm", "engine_args": args,
                         "replicas": replicas, "placement": placement,
                         "route": {"model_name": f"m-{j % 7}" if wild and r.random() < 0.1 else f"svc-{j}"}})
    try:
        cluster = cluster_from_hostvars(groups, hostvars, f"random-{seed}")
        strategy = parse_strategy({"name": f"random-{seed}", "description": "generated", "services": services},
                                  f"random-{seed}")
    except InputError as exc:
        return {"input_error": str(exc)}
    return plan(cluster, load_catalog(), strategy).to_dict()


def random_cases():
    return [(f"random/{seed}", (lambda seed=seed: random_case(seed))) for seed in range(RANDOM_CASES)]


def all_cases():
    return repository_cases() + bench_cases() + random_cases()


def record(data) -> dict:
    text = _normal(data)
    entry = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "summary": _summary(data)}
    if isinstance(data, dict) and "inputs" in data:
        entry["inputs"] = json.loads(_normal(data["inputs"]))
        entry["plan"] = json.loads(text)   # repository plans are kept whole: a difference shows in the diff
    return entry


# ---- the test ---------------------------------------------------------------------------------------

def _recorded() -> dict:
    with gzip.open(RECORDED, "rt", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def recorded():
    return _recorded()


def test_every_case_is_recorded(recorded):
    assert sorted(recorded) == sorted(name for name, _ in all_cases())


@pytest.mark.parametrize("name,thunk", all_cases(), ids=lambda value: value if isinstance(value, str) else "")
def test_plan_is_unchanged(name, thunk, recorded):
    if name not in recorded:
        pytest.fail(f"{name} is not recorded: record again (module docstring)")
    before, now = recorded[name], record(thunk())
    if "inputs" in before and before["inputs"] != now.get("inputs"):
        pytest.fail(f"{name}: its inputs changed since the recording ({before['inputs']} -> {now.get('inputs')}); "
                    "if the plan is meant to change, record again (module docstring) and say why in the commit")
    if "plan" in before:
        assert now.get("plan") == before["plan"]
    assert now["summary"] == before["summary"]
    assert now["sha256"] == before["sha256"]


def test_the_repository_reader_is_the_one_compared():
    """The repository cases read each inventory once; the plan equals plan_from_inventory's."""
    from gpufleet.api import plan_from_inventory

    name, thunk = next((n, t) for n, t in repository_cases() if n == "repo/production/baseline")
    assert _normal(thunk()) == _normal(plan_from_inventory(str(REPO / "inventory" / "production"), "baseline",
                                                           str(REPO / "strategies")))


def main(argv) -> int:
    if argv != ["--record"]:
        print(__doc__)
        return 2
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import SANDBOX_CPU_MIB_OF_THE_UNIT_TESTS  # the sandbox memory the unit tests plan with

    os.environ.setdefault("GPUFLEET_SANDBOX_CPU_MIB", SANDBOX_CPU_MIB_OF_THE_UNIT_TESTS)
    data = {name: record(thunk()) for name, thunk in all_cases()}
    RECORDED.parent.mkdir(exist_ok=True)
    with gzip.GzipFile(RECORDED, "wb", mtime=0) as handle:
        handle.write((json.dumps(data, sort_keys=True, indent=0) + "\n").encode())
    print(f"{len(data)} plans recorded in {RECORDED} by {gpufleet.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
