"""The plan as data: the dict `gpufleet plan --format json`, plan files and the Ansible fact
`gpufleet_plan` carry (docs/CONTRACTS.md). Serialises only: every decision is the planner's."""
from __future__ import annotations


def nodes_to_list(cluster) -> list:
    """The inventory's nodes as the roles read them (strategy-independent)."""
    return [{"host": n.host, "group": n.group, "address": n.address, "labels": dict(n.labels),
             "num_gpus": n.gpu_count, "num_cpus": n.cpus, "cpu_memory_mib": n.cpu_memory_mib}
            for n in cluster.nodes]


def _route(sp) -> dict:
    """The service's route; domain, priority, fallback and image_input (the catalog's model has a
    vision tower) only where set, so plans without routing by content read as before."""
    s = sp.service
    route = {"model_name": s.model_name}
    if s.domain:
        route.update(domain=s.domain, priority=s.priority)
    if s.fallback:
        route["fallback"] = list(s.fallback)
    if sp.model is not None and sp.model.vision_hidden_size:
        route["image_input"] = True
    return route


def _routing(routing) -> dict:
    if routing is None:
        return {}
    return {"routing": {"embedding_model": routing.embedding_model, "default_model": routing.default_model,
                        "min_score": routing.min_score,
                        "domains": {d: list(examples) for d, examples in routing.domains.items()}}}


def _service(sp) -> dict:
    s = sp.service
    vllm = s.engine == "vllm" and sp.model is not None
    return {
        "name": s.name, "model": s.model, "engine": s.engine,
        "model_source": s.model_source or s.model,
        "route": _route(sp),
        "engine_args": dict(sp.engine_args),
        "replicas": {"min": s.replicas.min, "max": sp.planned_max,
                     "initial": min(s.replicas.initial, sp.planned_max),
                     "target_ongoing_requests": s.replicas.target_ongoing_requests,
                     "autoscaling": s.replicas.autoscaling},
        **({"idle_unload_s": s.replicas.idle_unload_s} if s.replicas.lazy else {}),
        **({"idle": "sleep", "idle_sleep_s": s.replicas.idle_sleep_s} if s.replicas.idle == "sleep" else {}),
        "max_replicas": sp.planned_max if not sp.blocked else 0,
        "kv_cache_tokens": sp.kv_cache_tokens if vllm and sp.model.runner == "generate" else None,
        "kv_cache": dict(sp.kv_cache) if vllm and sp.kv_cache else None,
        "label_selector": dict(sp.label_selector),
        "ray": sp.ray,
        "placements": [{"replica": r, "host": h, "devices": list(d)} for r, h, d in sp.placements],
        "ollama": sp.ollama,
    }


def _on_demand(device) -> dict:
    """Only on devices that hold on-demand services: what each takes and the set counted."""
    if not device.on_demand:
        return {}
    return {"on_demand": {"max_loaded": device.loaded_cap,
                          "services": {name: round(mib) for name, mib in sorted(device.on_demand.items())},
                          "counted": list(device.worst_loaded())}}


def plan_to_dict(plan) -> dict:
    cap = plan.strategy.max_loaded_models
    return {
        "strategy": plan.strategy.name,
        "description": plan.strategy.description,
        "inventory": plan.cluster.source,
        "feasible": plan.feasible,
        "errors": [f.to_dict() for f in plan.errors],
        "warnings": [f.to_dict() for f in plan.warnings],
        "nodes": nodes_to_list(plan.cluster),
        "services": [_service(sp) for sp in plan.services],
        "gpus": [{"host": d.host, "index": d.index, "kind": d.kind, "memory_mib": d.memory_mib,
                  "planned_mib": round(d.used_mib),
                  "allocations": [{"service": a.service, "replica": a.replica, "mib": round(a.mib),
                                   "parts": a.parts} for a in d.allocations], **_on_demand(d)}
                 for d in plan.devices],
        **({"max_loaded_models": cap} if cap else {}),
        **_routing(plan.strategy.routing),
    }
