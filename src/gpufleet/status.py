"""The live cluster (as `playbooks/status.yml` reads it) against the applied plan: drift as findings.

Pure: takes the data the status play publishes and the applied record; returns data that
`format_status` renders. Drift codes:

- node_missing / node_dead: a planned node is not in Ray, or Ray lists it dead
- label_missing / label_mismatch: a planned node lacks one of its identity labels in Ray
- app_missing / app_unhealthy / deployment_unhealthy: Serve is not running what the plan says
- service_missing / service_unexpected: a planned vLLM service has no deployment, or the reverse
- replicas_missing: fewer running replicas than the plan's minimum
- replica_misplaced: a replica runs on a node the plan did not place it on
- memory_above_plan: a GPU uses more memory than planned (with a tolerance)
- ray_unit_inactive / ollama_unit_missing / ollama_unit_inactive: systemd units
"""
from __future__ import annotations

try:
    from .serve_config import APP_NAME, LLM_DEPLOYMENT_PREFIX
except ImportError:  # serve_config names them; the same literals otherwise
    APP_NAME, LLM_DEPLOYMENT_PREFIX = "gpufleet", "LLMServer:"

HOST_LABEL = "gpufleet.io/host"
# Ray: an application is RUNNING while its deployments are "healthy or autoscaling".
SERVING = ("HEALTHY", "UPSCALING", "DOWNSCALING")
# nvidia-smi and the planner never agree to the MiB: drift starts above this margin.
MEMORY_TOLERANCE_MIB, MEMORY_TOLERANCE_SHARE = 512, 0.05


def _finding(code: str, message: str, **where) -> dict:
    return {"code": code, "message": message, **{k: v for k, v in where.items() if v is not None}}


def parse_gpu_rows(rows: list) -> list:
    """nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used --format=csv,noheader,nounits"""
    gpus = []
    for row in rows or []:
        parts = [p.strip() for p in row.split(",")]
        if len(parts) < 5:
            continue
        try:
            gpus.append({"index": int(parts[0]), "uuid": parts[1], "name": parts[2],
                         "memory_mib": int(float(parts[3])), "used_mib": int(float(parts[4]))})
        except ValueError:
            continue
    return gpus


def parse_unit_rows(rows: list) -> list:
    """systemctl list-units --plain --no-legend: UNIT LOAD ACTIVE SUB DESCRIPTION"""
    units = []
    for row in rows or []:
        parts = row.split(None, 4)
        if len(parts) >= 4 and parts[0].endswith(".service"):
            units.append({"unit": parts[0], "load": parts[1], "active": parts[2], "sub": parts[3]})
    return units


def build_status(stats_data: dict, applied: dict | None) -> dict:
    cluster = stats_data.get("gpufleet_cluster") or {}
    hosts_raw = stats_data.get("gpufleet_hosts") or {}
    nodes = cluster.get("nodes")
    serve = cluster.get("serve")
    host_of = {}  # Ray node id -> inventory host, by the identity label
    for n in nodes or []:
        host = (n.get("labels") or {}).get(HOST_LABEL)
        if host:
            host_of[n["node_id"]] = host
    hosts = {h: {"gpus": parse_gpu_rows(v.get("gpus")), "nvidia_smi": bool(v.get("nvidia_smi")),
                 "units": parse_unit_rows(v.get("units"))} for h, v in hosts_raw.items()}
    apps = {}
    for name, app in ((serve or {}).get("applications") or {}).items():
        deployments = {}
        for dname, dep in (app.get("deployments") or {}).items():
            replicas = [{**r, "host": host_of.get(r.get("node_id"), r.get("node_ip"))}
                        for r in dep.get("replicas") or []]
            deployments[dname] = {**dep, "replicas": replicas}
        apps[name] = {**app, "deployments": deployments}

    plan = (applied or {}).get("plan")
    drift = compute_drift(plan, nodes, apps if serve is not None else None, hosts) if plan else []
    return {"applied": {k: (applied or {}).get(k) for k in ("strategy", "applied_at", "source")} if applied else None,
            "nodes": nodes, "applications": apps if serve is not None else None, "hosts": hosts,
            "errors": list(cluster.get("errors") or []), "drift": drift}


def compute_drift(plan: dict, nodes: list | None, apps: dict | None, hosts: dict) -> list:
    """Every finding, in this order: Ray nodes, Serve, GPU memory, systemd units. `nodes` or
    `apps` is None when the probe could not read it: that part is not judged."""
    drift = []
    if nodes is not None:
        drift += node_drift(plan, nodes)
    if apps is not None:
        drift += serve_drift(plan, apps)
    return drift + memory_drift(plan, hosts) + ray_unit_drift(hosts) + ollama_unit_drift(plan, hosts)


def _live_nodes(nodes: list) -> dict:
    """Inventory host -> its Ray node, by the identity label; a restarted raylet's ALIVE entry
    wins over the DEAD one Ray keeps."""
    by_host = {}
    for n in nodes:
        host = (n.get("labels") or {}).get(HOST_LABEL)
        if host and (host not in by_host or str(n.get("state")) == "ALIVE"):
            by_host[host] = n
    return by_host


def node_drift(plan: dict, nodes: list) -> list:
    """node_missing, node_dead, label_missing, label_mismatch."""
    drift = []
    by_host = _live_nodes(nodes)
    for planned in plan.get("nodes") or []:
        host = planned["host"]
        live = by_host.get(host)
        if live is None:
            drift.append(_finding("node_missing", "not in the Ray cluster (or it lacks its gpufleet.io/host label)",
                                  host=host))
            continue
        if str(live.get("state")) != "ALIVE":
            drift.append(_finding("node_dead", f"Ray lists it {live.get('state')}", host=host))
        labels = live.get("labels") or {}
        for key, value in (planned.get("labels") or {}).items():
            if key not in labels:
                drift.append(_finding("label_missing", f"label {key}={value} is missing", host=host))
            elif labels[key] != value:
                drift.append(_finding("label_mismatch", f"label {key} is {labels[key]!r}, planned {value!r}",
                                      host=host))
    return drift


def serve_drift(plan: dict, apps: dict) -> list:
    """app_missing, app_unhealthy, service_unexpected, then per planned vLLM service
    service_missing or its deployment's drift. Without vLLM services, only a leftover gpufleet
    application is drift."""
    vllm = [s for s in plan.get("services") or [] if s.get("engine") == "vllm"]
    app = apps.get(APP_NAME)
    if not vllm and app is None:
        return []
    if app is None:
        return [_finding("app_missing", f"Serve has no application {APP_NAME!r}")]
    drift = []
    if app.get("status") != "RUNNING":
        drift.append(_finding("app_unhealthy", f"application {APP_NAME} is {app.get('status')}: "
                              f"{app.get('message') or 'no message'}"))
    deployments = app.get("deployments") or {}
    planned = {LLM_DEPLOYMENT_PREFIX + s["name"]: s for s in vllm}
    for dname in deployments:
        if dname.startswith(LLM_DEPLOYMENT_PREFIX) and dname not in planned:
            drift.append(_finding("service_unexpected", f"deployment {dname} is not in the applied plan",
                                  service=dname[len(LLM_DEPLOYMENT_PREFIX):]))
    for dname, service in planned.items():
        if dname not in deployments:
            drift.append(_finding("service_missing", f"no deployment {dname}", service=service["name"]))
        else:
            drift += deployment_drift(service, deployments[dname])
    return drift


def deployment_drift(service: dict, dep: dict) -> list:
    """deployment_unhealthy, replicas_missing, replica_misplaced: one planned vLLM service's deployment."""
    name, drift = service["name"], []
    if dep.get("status") not in SERVING:
        drift.append(_finding("deployment_unhealthy", f"{dep.get('status')}: {dep.get('message') or ''}".strip(),
                              service=name))
    running = [r for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"]
    minimum = (service.get("replicas") or {}).get("min") or 0
    if len(running) < minimum:
        drift.append(_finding("replicas_missing", f"{len(running)} running, the plan wants at least {minimum}",
                              service=name))
    allowed = {p["host"] for p in service.get("placements") or []}
    for r in running:
        if allowed and r.get("host") not in allowed:
            drift.append(_finding("replica_misplaced", f"replica {r.get('replica_id')} runs on {r.get('host')}, "
                                  f"planned on {', '.join(sorted(allowed))}", service=name, host=r.get("host")))
    return drift


def memory_drift(plan: dict, hosts: dict) -> list:
    """memory_above_plan: a GPU nvidia-smi reads uses more than planned, beyond the tolerance."""
    drift = []
    for g in plan.get("gpus") or []:
        if g.get("kind", "gpu") != "gpu":
            continue
        live = next((x for x in (hosts.get(g["host"]) or {}).get("gpus") or [] if x["index"] == g["index"]), None)
        if live is None:
            continue
        planned = g.get("planned_mib", 0)
        if live["used_mib"] > planned + max(MEMORY_TOLERANCE_MIB, MEMORY_TOLERANCE_SHARE * g["memory_mib"]):
            drift.append(_finding("memory_above_plan", f"uses {live['used_mib']} MiB, planned {planned} MiB",
                                  gpu=f"{g['host']}:{g['index']}", host=g["host"]))
    return drift


def ray_unit_drift(hosts: dict) -> list:
    """ray_unit_inactive: a loaded ray-* unit that is not active (a unit systemd does not find is not judged)."""
    return [_finding("ray_unit_inactive", f"{u['unit']} is {u['active']} ({u['sub']})", host=host)
            for host, info in hosts.items() for u in info["units"]
            if u["unit"].startswith("ray-") and u["active"] != "active" and u["load"] == "loaded"]


def ollama_unit_drift(plan: dict, hosts: dict) -> list:
    """ollama_unit_missing, ollama_unit_inactive: each Ollama service's own unit on its host."""
    services = [s for s in plan.get("services") or [] if s.get("engine") == "ollama"]
    names = [s["name"] for s in services]
    drift = []
    for service in services:
        host = (service.get("ollama") or {}).get("host")
        if host not in hosts:  # not planned, or the host was not read
            continue
        mine = [u for u in hosts[host]["units"] if _ollama_unit_owner(u["unit"], names) == service["name"]]
        if not mine:
            drift.append(_finding("ollama_unit_missing", "no Ollama unit on the host", service=service["name"],
                                  host=host))
        elif not any(u["active"] == "active" for u in mine):
            drift.append(_finding("ollama_unit_inactive", ", ".join(f"{u['unit']} is {u['active']}" for u in mine),
                                  service=service["name"], host=host))
    return drift


def _ollama_unit_owner(unit: str, services: list) -> str | None:
    """The Ollama service whose unit this is: `<prefix><service>.service` (the ollama role's
    ollama_unit_prefix, gpufleet-ollama- by default), the longest name if several end it."""
    if "ollama" not in unit:
        return None
    names = [s for s in services if unit == f"{s}.service" or unit.endswith((f"-{s}.service", f"_{s}.service"))]
    return max(names, key=len, default=None)


def format_status(data: dict) -> str:
    lines = []
    applied = data.get("applied")
    lines.append(f"applied: {applied['strategy']} since {applied.get('applied_at') or '?'}" if applied
                 else "applied: no record (nothing applied with gpufleet, or the record was removed)")
    for error in data.get("errors") or []:
        lines.append(f"  could not read: {error}")
    if data.get("nodes") is not None:
        lines += ["", f"{'ray node':22} {'state':6} {'address':16} labels"]
        for n in sorted(data["nodes"], key=lambda n: ((n.get("labels") or {}).get(HOST_LABEL) or "", n["node_id"])):
            labels = n.get("labels") or {}
            shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if not k.startswith("ray.io/node-id"))
            name = labels.get(HOST_LABEL) or n["node_id"][:12]
            lines.append(f"{name:22} {n['state'][:6]:6} {n.get('node_ip') or '':16} {shown}")
    if data.get("applications") is not None:
        lines.append("")
        if not data["applications"]:
            lines.append("serve: no applications")
        for name, app in sorted(data["applications"].items()):
            message = f" ({app['message']})" if app.get("message") else ""
            lines.append(f"serve app {name}: {app.get('status')}{message}")
            for dname, dep in sorted((app.get("deployments") or {}).items()):
                replicas = dep.get("replicas") or []
                where = ", ".join(f"{r.get('host')}({r.get('state')})" for r in replicas) or "no replicas"
                lines.append(f"  {dname:40} {dep.get('status') or '?':12} {where}")
    gpu_lines = []
    for host, info in sorted((data.get("hosts") or {}).items()):
        for g in info["gpus"]:
            device = f"{host}:{g['index']}"
            gpu_lines.append(f"{device:22} {g['name'][:20]:20} {g['used_mib']:>7} / {g['memory_mib']} MiB")
        for u in info["units"]:
            gpu_lines.append(f"{host:22} {u['unit']:36} {u['active']} ({u['sub']})")
    if gpu_lines:
        lines += ["", *gpu_lines]
    lines.append("")
    if not applied:
        lines.append("drift: not checked (no applied record)")
    elif not data["drift"]:
        lines.append("drift: none: the cluster matches the applied plan")
    else:
        lines.append(f"DRIFT ({len(data['drift'])})")
        for d in data["drift"]:
            where = ", ".join(str(d[k]) for k in ("service", "host", "gpu") if d.get(k))
            lines.append(f"  [{d['code']}] {where + ': ' if where else ''}{d['message']}")
    return "\n".join(lines)
