"""The plan as data (JSON, the Ansible fact) and as a table for people."""
from __future__ import annotations

from . import engine_args as planned_args
from . import memory as mem
from . import ollama_unit
from .catalog import load_catalog

PART_ORDER = ("weights", "kv_cache", "activations", "overhead", "reserved", "cuda_context")


def _ray(sp, devices_by_name) -> dict | None:
    if not sp.placements or sp.service.engine != "vllm":
        return None
    _, host, indices = sp.placements[0]
    first = devices_by_name[(host, indices[0])]
    if first.kind == "cpu":
        bundles = [{"CPU": 1} for _ in range(sp.tp)]
    else:
        shared, fraction = False, 0.0
        for replica, host, indices in sp.placements:
            for index in indices:
                device = devices_by_name[(host, index)]
                shared |= any((a.service, a.replica) != (sp.name, replica) for a in device.allocations)
                mine = next(a for a in device.allocations if (a.service, a.replica) == (sp.name, replica))
                fraction = max(fraction, mine.mib / device.memory_mib)
        bundles = [{"GPU": mem.ceil_share(fraction) if shared else 1.0} for _ in range(sp.tp)]
    return {"bundles": bundles,
            "bundle_label_selector": [dict(sp.label_selector) for _ in range(sp.tp)],
            "placement_strategy": "STRICT_PACK"}


def _service(sp, devices_by_name, ollama_listen: dict) -> dict:
    s = sp.service
    planned_max = len(sp.placements) if s.replicas.autoscaling else s.replicas.max
    engine_args = dict(s.engine_args)
    if s.engine == "vllm" and sp.model is not None:
        engine_args.setdefault("tensor_parallel_size", sp.tp)
        engine_args.setdefault("gpu_memory_utilization", sp.util)
        engine_args.setdefault("max_model_len", sp.max_model_len)
        if sp.model.runner != "generate":
            engine_args.setdefault("runner", sp.model.runner)
    if sp.model is not None:
        # Every argument the planner reads, at the value it planned with: the engines get them all.
        kind = devices_by_name[(sp.placements[0][1], sp.placements[0][2][0])].kind if sp.placements else "gpu"
        engine_args = planned_args.planned(s.engine, engine_args, sp.model, _engine_constants(), kind)
    ollama = None
    if s.engine == "ollama" and sp.model is not None:
        ollama = {"host": s.host, "gpus": list(s.gpus), "tag": sp.model.ollama_tag,
                  "listen": ollama_listen[s.name], "spread": len(s.gpus) > 1}
    return {
        "name": s.name, "model": s.model, "engine": s.engine,
        "model_source": s.model_source or s.model,
        "route": {"model_name": s.model_name},
        "engine_args": engine_args,
        "replicas": {"min": s.replicas.min, "max": planned_max, "initial": min(s.replicas.initial, planned_max),
                     "target_ongoing_requests": s.replicas.target_ongoing_requests,
                     "autoscaling": s.replicas.autoscaling},
        "max_replicas": planned_max if not sp.blocked else 0,
        "kv_cache_tokens": sp.kv_cache_tokens if s.engine == "vllm" and sp.model is not None
        and sp.model.runner == "generate" else None,
        "label_selector": dict(sp.label_selector),
        "ray": _ray(sp, devices_by_name),
        "placements": [{"replica": r, "host": h, "devices": list(d)} for r, h, d in sp.placements],
        "ollama": ollama,
    }


def nodes_to_list(cluster) -> list:
    """The inventory's nodes as the roles read them (strategy-independent)."""
    return [{"host": n.host, "group": n.group, "address": n.address, "labels": dict(n.labels),
             "num_gpus": n.gpu_count, "num_cpus": n.cpus, "cpu_memory_mib": n.cpu_memory_mib}
            for n in cluster.nodes]


def _engine_constants() -> dict:
    """The catalog's engine constants (max_num_seqs, block_size, ...) that the planner's defaults
    come from. The Plan does not record the catalog it was made with, so these are the built-in
    catalog's: a --catalog file that overrides engines.* is sized with its values but the plan
    carries the built-in ones (until the planner hands its constants to the Plan)."""
    global _ENGINES
    if _ENGINES is None:
        _ENGINES = load_catalog().engines
    return _ENGINES


_ENGINES: dict | None = None


def plan_to_dict(plan) -> dict:
    devices_by_name = {(d.host, d.index): d for d in plan.devices}
    ollama_listen = ollama_unit.listen_addresses(
        [(sp.name, sp.service.host) for sp in plan.services if sp.service.engine == "ollama" and sp.model is not None])
    return {
        "strategy": plan.strategy.name,
        "description": plan.strategy.description,
        "inventory": plan.cluster.source,
        "feasible": plan.feasible,
        "errors": [f.to_dict() for f in plan.errors],
        "warnings": [f.to_dict() for f in plan.warnings],
        "nodes": nodes_to_list(plan.cluster),
        "services": [_service(sp, devices_by_name, ollama_listen) for sp in plan.services],
        "gpus": [{"host": d.host, "index": d.index, "kind": d.kind, "memory_mib": d.memory_mib,
                  "planned_mib": round(d.used_mib),
                  "allocations": [{"service": a.service, "replica": a.replica, "mib": round(a.mib),
                                   "parts": a.parts} for a in d.allocations]}
                 for d in plan.devices],
    }


def _device_name(g: dict) -> str:
    return f"{g['host']}:{g['index'] if g['kind'] == 'gpu' else 'cpu'}"


def format_table(data: dict) -> str:
    """Per-service summary, then each device's memory split, then the verdicts."""
    lines = [f"strategy {data['strategy']} on {data['inventory']}: "
             + ("FITS" if data["feasible"] else f"DOES NOT FIT ({len(data['errors'])} error(s))"), ""]
    lines.append(f"{'service':28} {'engine':7} {'model':36} {'replicas':>9} {'KV tokens':>10}")
    for s in data["services"]:
        r = s["replicas"]
        count = f"{r['min']}-{s['max_replicas']}" if r["autoscaling"] else str(s["max_replicas"])
        kv = "-" if s["kv_cache_tokens"] is None else str(s["kv_cache_tokens"])
        lines.append(f"{s['name'][:28]:28} {s['engine']:7} {s['model'][:36]:36} {count:>9} {kv:>10}")
    lines += ["", f"{'device':26} {'total MiB':>9} {'planned':>8} {'free':>7}  split (MiB)"]
    runs = []  # consecutive devices with the same split collapse into one line
    for g in data["gpus"]:
        signature = (g["memory_mib"], g["planned_mib"],
                     tuple((a["service"], a["mib"], tuple(sorted(a["parts"].items()))) for a in g["allocations"]))
        if runs and runs[-1][0] == signature:
            runs[-1][2] = g
            runs[-1][3] += 1
        else:
            runs.append([signature, g, g, 1])
    for _, first, last, count in runs:
        name = _device_name(first) + (f"..{_device_name(last)} ({count})" if count > 1 else "")
        if not first["allocations"]:
            lines.append(f"{name:26} {first['memory_mib']:>9} {0:>8} {first['memory_mib']:>7}  (nothing planned)")
            continue
        split = "; ".join(
            f"{a['service']}#{a['replica']} {a['mib']} (" + " ".join(
                f"{k.replace('_', ' ')} {a['parts'][k]}" for k in PART_ORDER if a["parts"].get(k)) + ")"
            for a in first["allocations"])
        over = " OVER" if first["planned_mib"] > first["memory_mib"] else ""
        lines.append(f"{name:26} {first['memory_mib']:>9} {first['planned_mib']:>8} "
                     f"{first['memory_mib'] - first['planned_mib']:>7}{over}  {split}")
    for kind in ("errors", "warnings"):
        if data[kind]:
            lines += ["", kind.upper()]
            for f in data[kind]:
                where = ", ".join(x for x in (f["service"], f["gpu"], f["field"]) if x)
                lines.append(f"  [{f['code']}] {where}: {f['message']}")
                if f["fix"]:
                    lines.append(f"      fix: {f['fix']}")
    return "\n".join(lines)
