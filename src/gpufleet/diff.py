"""One plan against another: services added, removed, moved or resized, memory per GPU before and
after, and the transition the serve role carries out between them (gpufleet.transition): its steps,
whether it is hitless and, where not, which model loses capacity.

Pure: takes two plans (docs/CONTRACTS.md shape, `before` may be None for "nothing applied") and
returns data; `format_diff` renders it for people.
"""
from __future__ import annotations

import re

# Engine arguments whose change resizes a service (memory, parallelism, context).
_SIZE_ARGS = ("tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization", "max_model_len",
              "dtype", "kv_cache_dtype", "max_num_seqs", "max_num_batched_tokens", "quantization")


def _placements(service: dict) -> list:
    if service.get("engine") == "ollama" and service.get("ollama"):
        o = service["ollama"]
        return [f"{o.get('host')}:{','.join(str(g) for g in o.get('gpus') or [])}"]
    places = sorted(((p["host"], tuple(p.get("devices") or [])) for p in service.get("placements") or []),
                    key=lambda hp: (_natural(hp[0]), hp[1]))
    return [f"{host}:{','.join(str(d) for d in devices)}" for host, devices in places]


def _natural(text: str) -> list:
    """node-2 before node-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _replicas(service: dict) -> str:
    r = service.get("replicas") or {}
    if r.get("autoscaling"):
        return f"{r.get('min')}-{r.get('max')} (autoscaling)"
    return str(r.get("max", service.get("max_replicas")))


def _service_changes(before: dict, after: dict) -> tuple[list, list]:
    """(what moved, what was resized or otherwise changed), as short phrases."""
    return _moves(before, after), _resizes(before, after)


def _moves(before: dict, after: dict) -> list:
    """Placement (host:devices, gone then new) and label selector."""
    moved = []
    b_place, a_place = _placements(before), _placements(after)
    if b_place != a_place:
        gone = [p for p in b_place if p not in a_place]
        new = [p for p in a_place if p not in b_place]
        moved.append("placement " + " ".join([f"-{p}" for p in gone] + [f"+{p}" for p in new]))
    if (before.get("label_selector") or {}) != (after.get("label_selector") or {}):
        moved.append(f"selector {before.get('label_selector') or {}} -> {after.get('label_selector') or {}}")
    return moved


def _resizes(before: dict, after: dict) -> list:
    """Model, engine, replicas, engine arguments (size first), route, Ollama address, Ray bundles."""
    resized = [f"{key} {before.get(key)} -> {after.get(key)}" for key in ("model", "engine", "model_source")
               if before.get(key) != after.get(key)]
    if _replicas(before) != _replicas(after):
        resized.append(f"replicas {_replicas(before)} -> {_replicas(after)}")
    b_args, a_args = before.get("engine_args") or {}, after.get("engine_args") or {}
    other = sorted(k for k in set(b_args) | set(a_args) if k not in _SIZE_ARGS)
    resized += [f"{key} {b_args.get(key)} -> {a_args.get(key)}" for key in (*_SIZE_ARGS, *other)
                if b_args.get(key) != a_args.get(key)]
    b_route, a_route = before.get("route") or {}, after.get("route") or {}
    resized += [f"route.{key} {b_route.get(key)} -> {a_route.get(key)}"
                for key in sorted(set(b_route) | set(a_route), key=lambda k: (k != "model_name", k))
                if b_route.get(key) != a_route.get(key)]
    b_listen, a_listen = (before.get("ollama") or {}).get("listen"), (after.get("ollama") or {}).get("listen")
    if b_listen and a_listen and b_listen != a_listen:  # an Ollama server's port: its unit and its clients change
        resized.append(f"listen {b_listen} -> {a_listen}")
    b_ray, a_ray = before.get("ray") or {}, after.get("ray") or {}
    if b_ray.get("bundles") != a_ray.get("bundles") and not any(r.startswith("tensor_parallel") for r in resized):
        resized.append(f"bundles {b_ray.get('bundles')} -> {a_ray.get('bundles')}")
    return resized


def _device(g: dict) -> str:
    return f"{g['host']}:{g['index'] if g.get('kind', 'gpu') == 'gpu' else 'cpu'}"


def _by_service(g: dict | None) -> dict:
    out: dict = {}
    for a in (g or {}).get("allocations") or []:
        out[a["service"]] = out.get(a["service"], 0) + a["mib"]
    return out


def diff_plans(before: dict | None, after: dict) -> dict:
    before = before or {"strategy": None, "services": [], "gpus": []}
    b_services = {s["name"]: s for s in before.get("services") or []}
    a_services = {s["name"]: s for s in after.get("services") or []}
    services = []
    for name in sorted(set(b_services) | set(a_services), key=lambda n: (n not in a_services, n)):
        b, a = b_services.get(name), a_services.get(name)
        if b is None:
            services.append({"name": name, "change": "added", "details": [
                f"{a['engine']} {a['model']} replicas {_replicas(a)} on {' '.join(_placements(a)) or '-'}"]})
        elif a is None:
            services.append({"name": name, "change": "removed", "details": [
                f"{b['engine']} {b['model']} on {' '.join(_placements(b)) or '-'}"]})
        else:
            moved, resized = _service_changes(b, a)
            change = "+".join(c for c, d in (("moved", moved), ("resized", resized)) if d) or "unchanged"
            services.append({"name": name, "change": change, "details": moved + resized})

    b_gpus = {_device(g): g for g in before.get("gpus") or []}
    a_gpus = {_device(g): g for g in after.get("gpus") or []}
    order = [_device(g) for g in after.get("gpus") or []] + [d for d in b_gpus if d not in a_gpus]
    gpus = []
    for name in order:
        b, a = b_gpus.get(name), a_gpus.get(name)
        gpus.append({
            "device": name,
            "memory_mib": (a or b).get("memory_mib"),
            "before_mib": b.get("planned_mib", 0) if b else 0,
            "after_mib": a.get("planned_mib", 0) if a else 0,
            "before": _by_service(b), "after": _by_service(a),
        })
    # the router's own settings: the cap and routing by content reach its table, not a service
    router = [f"{key} {_short(before.get(key))} -> {_short(after.get(key))}" for key in ROUTER_KEYS
              if before.get(key) != after.get(key)]
    changed = any(s["change"] != "unchanged" for s in services) or any(
        g["before"] != g["after"] for g in gpus) or bool(router)
    return {"before": before.get("strategy"), "after": after.get("strategy"), "changed": changed,
            "services": services, "router": router, "gpus": gpus,
            "transition": _transition(before, after) if changed else None}


ROUTER_KEYS = ("max_loaded_models", "routing")


def _short(value) -> str:
    text = "none" if value is None else str(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _transition(before: dict, after: dict) -> dict | None:
    """The serve role's steps between the plans, without their Serve configs (None: not feasible)."""
    from . import transition

    if not after.get("feasible") or not before.get("services") and not after.get("services"):
        return None
    try:
        data = transition.plan_transition(before if before.get("strategy") else None, after)
    except ValueError:  # a plan the Serve config cannot be built from (gpufleet.serve_config refuses it)
        return None
    return {"hitless": data["hitless"], "losses": data["losses"],
            "steps": [{"kind": s["kind"], "summary": s["summary"]} for s in data["steps"]]}


def format_diff(data: dict, only_changed_gpus: bool = True) -> str:
    lines = [f"{data['before'] or '(nothing applied)'} -> {data['after']}: "
             + ("changes" if data["changed"] else "no change")]
    if not data["changed"]:
        return "\n".join(lines)
    marks = {"added": "+", "removed": "-", "unchanged": "="}
    lines.append("")
    for s in data["services"]:
        mark = marks.get(s["change"], "~")
        lines.append(f"  {mark} {s['name']:28} {s['change']}")
        for detail in s["details"] if s["change"] != "unchanged" else []:
            lines.append(f"      {detail}")
    for setting in data.get("router") or []:
        lines.append(f"  ~ router                       {setting}")
    gpus = [g for g in data["gpus"] if g["before"] != g["after"] or not only_changed_gpus]
    if gpus:
        lines += ["", f"  {'device':30} {'total':>7} {'before':>7} {'after':>7}  services after (MiB)"]
        runs: list = []  # consecutive devices with the same change collapse into one line
        for g in gpus:
            signature = (g["memory_mib"], g["before_mib"], g["after_mib"], tuple(g["before"].items()),
                         tuple(g["after"].items()))
            if runs and runs[-1][0] == signature:
                runs[-1][2], runs[-1][3] = g, runs[-1][3] + 1
            else:
                runs.append([signature, g, g, 1])
        for _, g, last, count in runs:
            name = g["device"] + (f"..{last['device']} ({count})" if count > 1 else "")
            split = ", ".join(f"{k} {v}" for k, v in g["after"].items()) or "(empty)"
            delta = g["after_mib"] - g["before_mib"]
            over = " OVER" if g["memory_mib"] and g["after_mib"] > g["memory_mib"] else ""
            lines.append(f"  {name:30} {g['memory_mib'] or 0:>7} {g['before_mib']:>7} {g['after_mib']:>7}"
                         f"  {split}{'' if not delta else f'  ({delta:+d})'}{over}")
    if data.get("transition"):
        from .transition import format_transition

        lines += ["", format_transition(data["transition"])]
    return "\n".join(lines)
