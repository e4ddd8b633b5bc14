"""The plan as Prometheus metrics: a text file in the exposition format for the node exporter's
textfile collector (the monitoring role writes it on the head), so that a query can put what each
GPU was planned to hold beside what it holds.

Reads the plan dict (plan_data.plan_to_dict, docs/CONTRACTS.md) and copies its figures; it decides
and computes nothing (every figure is the planner's). Labels join the observed metrics:
`ip` is the node address that Ray's node metrics carry (`ray_node_gram_used{ip, GpuIndex}`),
`device` the GPU index (Ray's `GpuIndex`), `deployment` the Serve deployment name that
`ray_serve_deployment_replica_healthy` carries, `model_name` the served model name that vLLM's
metrics carry (`ray_vllm_kv_cache_usage_perc{model_name}`).

    gpufleet_plan_info{strategy}                                        1
    gpufleet_plan_node_info{host, ip, group}                            1
    gpufleet_plan_device_memory_mib{host, ip, device, device_type}      the device's memory (MiB)
    gpufleet_plan_device_planned_mib{host, ip, device, device_type}     planned on it in all (MiB)
    gpufleet_plan_memory_mib{..., service, replica, kind}               planned MiB by service and kind
                                                                        (weights, kv_cache, activations, reserved,
                                                                        overhead, cuda_context)
    gpufleet_plan_kv_cache_tokens{service, model_name, deployment, replica, host}
    gpufleet_plan_replicas_min / _max / _initial{service, model_name, engine[, deployment]}
"""
from __future__ import annotations

from gpufleet.serve_config import LLM_DEPLOYMENT_PREFIX

# The file name the monitoring role writes into the textfile collector's folder.
TEXTFILE_NAME = "gpufleet_plan.prom"

_HELP = {
    "gpufleet_plan_info": "The plan gpufleet applied (1), labelled with its strategy.",
    "gpufleet_plan_node_info": "A node the plan expects (1): its inventory host, address and group.",
    "gpufleet_plan_device_memory_mib": "Memory of the device as the planner counts it (MiB).",
    "gpufleet_plan_device_planned_mib": "Memory the plan puts on the device, every service together (MiB).",
    "gpufleet_plan_memory_mib": "Memory the plan puts on the device for one replica of a service, by kind (MiB).",
    "gpufleet_plan_kv_cache_tokens": "KV-cache capacity the plan gives one replica of a vLLM service (tokens).",
    "gpufleet_plan_replicas_min": "The fewest replicas the plan lets a service run.",
    "gpufleet_plan_replicas_max": "The most replicas the plan lets a service run (the real maximum).",
    "gpufleet_plan_replicas_initial": "Replicas a service starts with.",
}


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items() if v is not None and v != "")
    return "{" + body + "}" if body else ""


def _number(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


def samples(plan: dict) -> list:
    """(metric, labels, value) for every figure of the plan, in the plan's order."""
    out = [("gpufleet_plan_info", {"strategy": plan.get("strategy")}, 1)]
    address = {}
    for node in plan.get("nodes") or []:
        address[node["host"]] = node.get("address")
        out.append(("gpufleet_plan_node_info",
                    {"host": node["host"], "ip": node.get("address"), "group": node.get("group")}, 1))
    for dev in plan.get("gpus") or []:
        where = {"host": dev["host"], "ip": address.get(dev["host"]), "device": dev["index"],
                 "device_type": dev.get("kind")}
        out.append(("gpufleet_plan_device_memory_mib", where, dev["memory_mib"]))
        out.append(("gpufleet_plan_device_planned_mib", where, dev["planned_mib"]))
        for alloc in dev.get("allocations") or []:
            # by kind: a plan read back from a plan file has its keys sorted, one made in the play not
            for kind, mib in sorted((alloc.get("parts") or {}).items()):
                out.append(("gpufleet_plan_memory_mib",
                            {**where, "service": alloc["service"], "replica": alloc["replica"], "kind": kind}, mib))
    for svc in plan.get("services") or []:
        vllm = svc.get("engine") == "vllm"
        # the Serve deployment's name; its application (gpufleet.<service>.<digest>) changes with the config
        serve = {"deployment": LLM_DEPLOYMENT_PREFIX + svc["name"]} if vllm else {}
        who = {"service": svc["name"], "model_name": (svc.get("route") or {}).get("model_name"),
               "engine": svc.get("engine"), **serve}
        replicas = svc.get("replicas") or {}
        for bound in ("min", "max", "initial"):
            if replicas.get(bound) is not None:
                out.append((f"gpufleet_plan_replicas_{bound}", who, replicas[bound]))
        if svc.get("kv_cache_tokens") is not None:
            for place in svc.get("placements") or []:
                out.append(("gpufleet_plan_kv_cache_tokens",
                            {"service": svc["name"], "model_name": who["model_name"], **serve,
                             "replica": place["replica"], "host": place["host"]},
                            svc["kv_cache_tokens"]))
    return out


def textfile(plan: dict) -> str:
    """The plan in the Prometheus text exposition format (one HELP and TYPE per metric)."""
    by_metric: dict = {}
    for metric, labels, value in samples(plan):
        by_metric.setdefault(metric, []).append(f"{metric}{_labels(labels)} {_number(value)}")
    lines = []
    for metric, rows in by_metric.items():
        lines += [f"# HELP {metric} {_HELP[metric]}", f"# TYPE {metric} gauge", *rows]
    return "\n".join(lines) + "\n"
