"""The live cluster (as `playbooks/status.yml` reads it) against the applied plan: drift as findings.

Pure: takes the data the status play publishes and the applied record; returns data that
`format_status` renders. Drift codes:

- node_missing / node_dead: a planned node is not in Ray, or Ray lists it dead
- host_unreachable: the status play could not read a node that is down (Ansible cannot reach it, or
  its task failed and Ray does not list it alive)
- label_missing / label_mismatch: a planned node lacks one of its identity labels in Ray
- app_missing / app_unhealthy / deployment_unhealthy: Serve is not running what the plan says
- service_missing / service_unexpected: a planned vLLM service has no deployment, or the reverse
- replicas_missing: fewer running replicas than the plan's minimum
- replica_misplaced: a replica runs on a node the plan did not place it on
- memory_above_plan: a GPU uses more memory than planned (with a tolerance)
- ray_unit_inactive / ollama_unit_missing / ollama_unit_inactive: systemd units

Planned against observed (what the engines themselves report, never the plan read back):
- kv_cache_off_plan: a vLLM replica's KV cache, as its engine reports it (vLLM's
  vllm:cache_config_info metric through Ray's metrics export, else the engine's startup log line
  "GPU KV cache size: N tokens"), differs from the planned tokens by more than 2%
- memory_below_plan: a GPU with planned instances uses more than 5% less than planned
- ollama_offloaded / ollama_memory_off_plan / ollama_context_off_plan: what `ollama ps` reports
  for a loaded Ollama model against the plan (layers on the CPU; size beyond 5%; another context)
"""
from __future__ import annotations

import re

from . import nvidia_smi
from .inventory import HOST_LABEL
from .serve_config import APP_NAME, LLM_DEPLOYMENT_PREFIX, llm_deployments, service_of_app

# Ray: an application is RUNNING while its deployments are "healthy or autoscaling".
SERVING = ("HEALTHY", "UPSCALING", "DOWNSCALING")
# nvidia-smi and the planner never agree to the MiB: drift starts above this margin.
MEMORY_TOLERANCE_MIB, MEMORY_TOLERANCE_SHARE = 512, 0.05
# Planned against observed: drift beyond these shares of the planned figure.
KV_DRIFT_SHARE, MEMORY_DRIFT_SHARE, OLLAMA_DRIFT_SHARE = 0.02, 0.05, 0.05
# vLLM's info gauge vllm:cache_config_info (v1/metrics/loggers.py, log_metrics_info) as Ray's
# metrics agent exports it: ':' sanitised to '_' (vllm/v1/metrics/ray_wrappers.py) and Ray's "ray_"
# prefix; labels are CacheConfig's fields (num_gpu_blocks, block_size, kv_cache_size_tokens, ...)
# plus ReplicaId, the Serve replica's id.
CACHE_INFO_METRIC = "vllm_cache_config_info"
_PROM_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<labels>.*)\}\s+(?P<value>\S+)")
_PROM_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
# vLLM's startup line (v1/core/kv_cache_utils.py, update_kv_cache_capacity): "GPU" on CUDA, the
# device type upper-cased elsewhere ("CPU KV cache size: 198,528 tokens, Maximum concurrency ...").
_KV_LOG_LINE = re.compile(r"\b(?P<device>[A-Z]+)(?: \+ host)? KV cache size: (?P<tokens>[\d,]+) tokens")


def _finding(code: str, message: str, **where) -> dict:
    return {"code": code, "message": message, **{k: v for k, v in where.items() if v is not None}}


def parse_gpu_rows(rows: list) -> list:
    """status.yml's nvidia-smi rows (gpufleet.nvidia_smi.STATUS); a row that does not parse is left out."""
    return nvidia_smi.parse(rows, nvidia_smi.STATUS, strict=False)


def parse_unit_rows(rows: list) -> list:
    """systemctl list-units --plain --no-legend: UNIT LOAD ACTIVE SUB DESCRIPTION"""
    units = []
    for row in rows or []:
        parts = row.split(None, 4)
        if len(parts) >= 4 and parts[0].endswith(".service"):
            units.append({"unit": parts[0], "load": parts[1], "active": parts[2], "sub": parts[3]})
    return units


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def parse_cache_config_info(lines: list) -> list:
    """Prometheus text lines of the engines' cache_config_info gauges: one observation per engine,
    {replica_id, tokens, blocks, block_size, gpu_memory_utilization, kv_cache_memory_bytes, source}.
    A pooling model's engine reports num_gpu_blocks 0 or None (it keeps no KV cache)."""
    seen = {}
    for line in lines or []:
        match = _PROM_SAMPLE.match(line.strip())
        if not match or not match["name"].endswith(CACHE_INFO_METRIC):
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _PROM_LABEL.findall(match["labels"])}
        util = labels.get("gpu_memory_utilization")
        key = (labels.get("ReplicaId") or "", labels.get("engine") or "0")
        seen[key] = {"replica_id": labels.get("ReplicaId") or None, "tokens": _int(labels.get("kv_cache_size_tokens")),
                     "blocks": _int(labels.get("num_gpu_blocks")), "block_size": _int(labels.get("block_size")),
                     "gpu_memory_utilization": float(util) if util not in (None, "", "None") else None,
                     "kv_cache_memory_bytes": _int(labels.get("kv_cache_memory_bytes")), "source": "metric"}
    return list(seen.values())


ENGINE_UP_LINE = "init engine (profile, create kv cache"


def engines_started(entries: list) -> int:
    """How many engines logged that they are up ("init engine (profile, create kv cache, warmup
    model) took N s", v1/engine/core.py) in the logs the probe read on a node."""
    return sum(ENGINE_UP_LINE in (e.get("line") or "") for e in entries or [])


def parse_kv_log_lines(entries: list) -> list:
    """The engines' startup lines "<DEVICE> KV cache size: N tokens" as the probe found them in the
    Ray logs of a node: [{replica_id (or None when the log does not say), line}]. The last line per
    replica id wins (a restarted engine logs again)."""
    seen = {}
    for k, entry in enumerate(entries or []):
        match = _KV_LOG_LINE.search(entry.get("line") or "")
        if match:  # lines without a replica id are kept apart: two of them on a host are not attributed
            seen[entry.get("replica_id") or k] = {"replica_id": entry.get("replica_id"),
                                             "tokens": int(match["tokens"].replace(",", "")), "blocks": None,
                                             "block_size": None, "device": match["device"], "source": "log"}
    return list(seen.values())


_SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


def parse_ollama_ps(lines: list) -> list:
    """`ollama ps` as Ollama's cmd/cmd.go (ListRunningHandler) prints it: a tablewriter table without
    borders, columns padded by 4 spaces, NAME ID SIZE PROCESSOR CONTEXT UNTIL (CONTEXT since
    0.12; older servers print no CONTEXT). SIZE is format.HumanBytes (decimal units, "5.6 GB",
    "12 GB"); PROCESSOR is "100% GPU", "100% CPU", "48%/52% CPU/GPU" or "Unknown"."""
    rows = [line.rstrip() for line in lines or [] if line.strip()]
    if not rows or not rows[0].startswith("NAME"):
        return []
    header = rows[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    out = []
    for row in rows[1:]:
        cells = {}
        for k, name in enumerate(names):
            end = starts[k + 1] if k + 1 < len(starts) else None
            cells[name] = row[starts[k]:end].strip()
        size_text = cells.get("SIZE", "")
        number, _, unit = size_text.partition(" ")
        try:
            value, scale = float(number), _SIZE_UNITS[unit]
        except (KeyError, ValueError):
            size = size_max = None
        else:
            # format.HumanBytes: under 10 units "%.1f" (rounded: +-0.05), an integral value exactly,
            # from 10 units int(value) (truncated: up to one unit more), bytes exactly
            if "." in number:
                size, size_max = round((value - 0.05) * scale), round((value + 0.05) * scale)
            elif value >= 10 and unit != "B":
                size, size_max = round(value * scale), round((value + 1) * scale)
            else:
                size = size_max = round(value * scale)
        processor = cells.get("PROCESSOR", "")
        gpu = None
        if processor == "100% GPU":
            gpu = 100
        elif processor == "100% CPU":
            gpu = 0
        elif re.fullmatch(r"\d+%/\d+% CPU/GPU", processor):
            gpu = int(processor.split("/")[1].split("%")[0])
        out.append({"name": cells.get("NAME", ""), "id": cells.get("ID", ""), "size_bytes": size,
                    "size_max_bytes": size_max, "size": size_text,
                    "processor": processor, "gpu_percent": gpu, "context": _int(cells.get("CONTEXT")),
                    "until": cells.get("UNTIL", "")})
    return out


def build_status(stats_data: dict, applied: dict | None, unread: dict | None = None) -> dict:
    """`unread`: {host: why} of the nodes the status play could not read (gpufleet status carries
    on without them when the head was read)."""
    cluster = stats_data.get("gpufleet_cluster") or {}
    hosts_raw = stats_data.get("gpufleet_hosts") or {}
    nodes = cluster.get("nodes")
    serve = cluster.get("serve")
    host_of = {}  # Ray node id -> inventory host, by the identity label
    for n in nodes or []:
        host = (n.get("labels") or {}).get(HOST_LABEL)
        if host:
            host_of[n["node_id"]] = host
    prometheus = stats_data.get("gpufleet_prometheus")
    from_prometheus = _prometheus_by_host(prometheus, nodes)
    hosts = {h: {"gpus": parse_gpu_rows(v.get("gpus")), "nvidia_smi": bool(v.get("nvidia_smi")),
                 "units": parse_unit_rows(v.get("units")),
                 **_engine_observations(v, (from_prometheus or {}).get(h))}
             for h, v in hosts_raw.items()}
    apps = {}
    for name, app in ((serve or {}).get("applications") or {}).items():
        deployments = {}
        for dname, dep in (app.get("deployments") or {}).items():
            replicas = [{**r, "host": host_of.get(r.get("node_id"), r.get("node_ip"))}
                        for r in dep.get("replicas") or []]
            deployments[dname] = {**dep, "replicas": replicas}
        apps[name] = {**app, "deployments": deployments}

    plan = (applied or {}).get("plan")
    live_apps = apps if serve is not None else None
    drift = compute_drift(plan, nodes, live_apps, hosts) if plan else []
    drift = [_finding("host_unreachable", f"the status play could not read it: {why}", host=host)
             for host, why in sorted((unread or {}).items())] + drift
    observed = {"kv_cache": kv_rows(plan, live_apps, hosts), "memory": memory_rows(plan, hosts),
                "ollama": ollama_rows(plan, hosts)} if plan else None
    return {"applied": {k: (applied or {}).get(k) for k in ("strategy", "applied_at", "source")} if applied else None,
            "nodes": nodes, "applications": live_apps, "hosts": hosts,
            "errors": list(cluster.get("errors") or []) + list((prometheus or {}).get("errors") or []),
            "observed_from": "prometheus" if from_prometheus else "engines",
            "observed": observed, "drift": drift}


def _prometheus_by_host(prometheus: dict | None, nodes: list | None) -> dict | None:
    """The cache_config_info lines Prometheus holds (status.yml, `cluster_probe.py prometheus`), by
    inventory host: a line's `instance` label is the address of the node's metrics port, and the
    Ray node with that address carries the host label. None when Prometheus was not read (not
    deployed, the query failed, or no node known: status then uses what each node's engines report
    directly); a node Prometheus holds nothing for (not scraped yet) keeps its engines' own report."""
    if not prometheus or prometheus.get("metrics") is None or prometheus.get("errors") or not nodes:
        return None
    host_at = {n.get("node_ip"): (n.get("labels") or {}).get(HOST_LABEL) for n in nodes}
    out: dict = {}
    for line in prometheus["metrics"]:
        match = _PROM_SAMPLE.match(line.strip())
        labels = dict(_PROM_LABEL.findall(match["labels"])) if match else {}
        host = host_at.get(labels.get("instance", "").rsplit(":", 1)[0])
        if host:
            out.setdefault(host, []).append(line)
    return out


def _engine_observations(raw: dict, prometheus_lines: list | None = None) -> dict:
    """What a node's engines report, as the probe read it (status.yml, `cluster_probe.py engines`),
    their gauges from Prometheus when it was read (prometheus_lines not None):
    {kv_observed: [per engine], ollama_ps: {service: [rows]}, probe_errors: [...]}."""
    engines = raw.get("engines") or {}
    metric = parse_cache_config_info(engines.get("metrics"))
    if prometheus_lines is not None:
        # Prometheus' reading of an engine wins; an engine it has not scraped yet keeps the node's own
        scraped = [{**o, "source": "prometheus"} for o in parse_cache_config_info(prometheus_lines)]
        known = {o["replica_id"] for o in scraped}
        metric = scraped + [o for o in metric if o["replica_id"] not in known]
    logged = parse_kv_log_lines(engines.get("logs"))
    ollama = {}
    for service, read in (raw.get("ollama_ps") or {}).items():
        ollama[service] = {"rc": read.get("rc"), "models": parse_ollama_ps(read.get("stdout_lines")),
                           "error": (read.get("stderr") or "").strip()[:200] or None}
    return {"kv_observed": {"metric": metric, "log": logged, "engines_up": engines_started(engines.get("logs"))},
            "ollama_ps": ollama,
            "probe_errors": list(engines.get("errors") or [])}


def _pct(observed: float | None, planned: float | None) -> float | None:
    if observed is None or not planned:
        return None
    return round((observed - planned) / planned * 100, 2)


def _running_replicas(apps: dict | None) -> dict:
    """service -> [(replica_id, host)] of its RUNNING replicas in gpufleet's applications."""
    return {service: [(r.get("replica_id"), r.get("host")) for r in dep.get("replicas") or []
                      if r.get("state") == "RUNNING"]
            for service, (_, dep) in llm_deployments(apps).items()}


def _observation(hosts: dict, host: str | None, replica_id: str | None, alone_on_host: bool) -> dict | None:
    """The engine's own report for one replica: the metric by replica id; else a log line with the
    replica's id, or the host's only KV line when the replica is the host's only vLLM replica."""
    seen = (hosts.get(host) or {}).get("kv_observed") or {}
    for o in seen.get("metric") or []:
        if replica_id and o["replica_id"] == replica_id:
            return o
    logged = seen.get("log") or []
    for o in logged:
        if replica_id and o["replica_id"] == replica_id:
            return o
    if alone_on_host and len(logged) == 1 and logged[0]["replica_id"] is None:
        return logged[0]
    return None


def kv_rows(plan: dict, apps: dict | None, hosts: dict) -> list:
    """One row per running replica of every planned vLLM service: planned against observed KV cache."""
    running = _running_replicas(apps)
    per_host: dict = {}
    for replicas in running.values():
        for _, host in replicas:
            per_host[host] = per_host.get(host, 0) + 1
    rows = []
    for service in plan.get("services") or []:
        if service.get("engine") != "vllm":
            continue
        kv = service.get("kv_cache") or {}
        for replica_id, host in running.get(service["name"], []):
            seen = _observation(hosts, host, replica_id, per_host.get(host) == 1)
            runner = service.get("engine_args", {}).get("runner", "generate")
            up = ((hosts.get(host) or {}).get("kv_observed") or {}).get("engines_up")
            if seen is None and runner != "generate" and up and per_host.get(host) == 1:
                # vLLM sizes no KV cache for a pooling model and logs no KV cache size: what it reports
                seen = {"replica_id": None, "tokens": None, "blocks": None, "block_size": None, "source": "log",
                        "no_kv_cache": True}
            if seen and seen.get("blocks") is None and seen.get("tokens") is not None and kv.get("blocks_per_request"):
                # the log line gives tokens only: tokens = int(blocks / blocks_per_request x max_model_len)
                # (kv_cache_utils.py get_kv_cache_capacity), so blocks at the plan's block size are the
                # least count that gives them
                per, length = kv["blocks_per_request"], kv["max_model_len"]
                seen = {**seen, "blocks": -(-seen["tokens"] * per // length), "block_size": kv["block_size"],
                        "blocks_derived": True}
            block = (seen or {}).get("block_size") or kv.get("block_size")
            planned_blocks = (kv["bytes"] // (kv["bytes_per_token"] * block)
                              if kv.get("bytes_per_token") and block else None)
            rows.append({
                "service": service["name"], "replica_id": replica_id, "host": host,
                "runner": runner,
                "planned": {"tokens": service.get("kv_cache_tokens"), "blocks": planned_blocks,
                            "block_size": block if planned_blocks is not None else None,
                            "bytes": kv.get("bytes")},
                "observed": seen, "diff_pct": _pct((seen or {}).get("tokens"), service.get("kv_cache_tokens"))})
    return rows


def memory_rows(plan: dict, hosts: dict) -> list:
    """Each GPU nvidia-smi read: planned against used memory."""
    rows = []
    for g in plan.get("gpus") or []:
        if g.get("kind", "gpu") != "gpu":
            continue
        live = next((x for x in (hosts.get(g["host"]) or {}).get("gpus") or [] if x["index"] == g["index"]), None)
        if live is not None:
            rows.append({"gpu": f"{g['host']}:{g['index']}", "host": g["host"], "planned_mib": g.get("planned_mib", 0),
                         "used_mib": live["used_mib"], "diff_pct": _pct(live["used_mib"], g.get("planned_mib"))})
    return rows


def _ollama_planned_mib(plan: dict, name: str) -> float:
    """What Ollama itself counts for a loaded model (its `size`): weights, KV cache and graph of
    every GPU of the service, without the CUDA context."""
    total = 0
    for g in plan.get("gpus") or []:
        for a in g.get("allocations") or []:
            if a["service"] == name:
                total += sum(v for k, v in a["parts"].items() if k != "cuda_context")
    return total


def ollama_rows(plan: dict, hosts: dict) -> list:
    """Each planned Ollama service whose host was read: its model in `ollama ps` against the plan."""
    rows = []
    for service in plan.get("services") or []:
        if service.get("engine") != "ollama" or not service.get("ollama"):
            continue
        host, tag = service["ollama"]["host"], service["ollama"]["tag"]
        read = ((hosts.get(host) or {}).get("ollama_ps") or {}).get(service["name"])
        if read is None:
            continue
        model = next((m for m in read["models"] if m["name"] == tag or m["name"] == f"{tag}:latest"), None)
        planned_mib = _ollama_planned_mib(plan, service["name"])
        size_mib = ((model["size_bytes"] + model["size_max_bytes"]) / 2 / 1024 / 1024
                    if model and model["size_bytes"] is not None else None)
        context = (service.get("engine_args") or {}).get("context_length")
        rows.append({"service": service["name"], "host": host, "tag": tag, "rc": read["rc"], "error": read["error"],
                     "planned": {"mib": planned_mib, "context": context},
                     "observed": model, "diff_pct": _pct(size_mib, planned_mib)})
    return rows


def compute_drift(plan: dict, nodes: list | None, apps: dict | None, hosts: dict) -> list:
    """Every finding, in this order: Ray nodes, Serve, the engines' KV caches, GPU memory, systemd
    units, `ollama ps`. `nodes` or `apps` is None when the probe could not read it: that part (and the
    KV caches, which are matched to Serve's replicas) is not judged."""
    drift = []
    if nodes is not None:
        drift += node_drift(plan, nodes)
    if apps is not None:
        drift += serve_drift(plan, apps)
        drift += kv_drift(kv_rows(plan, apps, hosts))
    return (drift + memory_drift(plan, hosts) + memory_below_drift(memory_rows(plan, hosts)) + ray_unit_drift(hosts)
            + ollama_unit_drift(plan, hosts) + ollama_ps_drift(ollama_rows(plan, hosts)))


def _live_nodes(nodes: list) -> dict:
    """Inventory host -> its Ray node, by the identity label; a restarted raylet's ALIVE entry
    wins over the DEAD one Ray keeps."""
    by_host = {}
    for n in nodes:
        host = (n.get("labels") or {}).get(HOST_LABEL)
        if host and (host not in by_host or str(n.get("state")) == "ALIVE"):
            by_host[host] = n
    return by_host


def unread_nodes(stats_data: dict, failures: list) -> dict:
    """{host: why} of the status play's failures on nodes that are down: unreachable for Ansible,
    or not ALIVE in Ray (the runner's failures: {host, task, msg, unreachable})."""
    nodes = (stats_data.get("gpufleet_cluster") or {}).get("nodes") or []
    alive = {host for host, n in _live_nodes(nodes).items() if str(n.get("state")) == "ALIVE"}
    return {f["host"]: f["msg"] for f in failures if f.get("unreachable") or f["host"] not in alive}


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
    """app_missing, app_unhealthy (the router application, or a service's), service_unexpected, then
    per planned vLLM service service_missing or its deployment's drift. Without vLLM services, only a
    leftover gpufleet application is drift."""
    vllm = [s for s in plan.get("services") or [] if s.get("engine") == "vllm"]
    app = apps.get(APP_NAME)
    ours = {name: a for name, a in apps.items() if name == APP_NAME or service_of_app(name)}
    if not vllm and not ours:
        return []
    if app is None:
        return [_finding("app_missing", f"Serve has no application {APP_NAME!r}")]
    drift = []
    for name, a in sorted(ours.items()):
        if a.get("status") != "RUNNING":
            drift.append(_finding("app_unhealthy", f"application {name} is {a.get('status')}: "
                                  f"{a.get('message') or 'no message'}"))
    deployments = llm_deployments(apps)
    planned = {s["name"]: s for s in vllm}
    for name, (app_name, _) in sorted(deployments.items()):
        if name not in planned:
            drift.append(_finding("service_unexpected", f"deployment {LLM_DEPLOYMENT_PREFIX}{name} "
                                  f"({app_name}) is not in the applied plan", service=name))
    for name, service in planned.items():
        if name not in deployments:
            drift.append(_finding("service_missing", f"no deployment {LLM_DEPLOYMENT_PREFIX}{name}", service=name))
        else:
            drift += deployment_drift(service, deployments[name][1])
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


def kv_drift(rows: list) -> list:
    """kv_cache_off_plan: an engine reports a KV cache more than 2% away from the planned tokens.
    Replicas whose engine reported nothing are shown as unobserved, not judged."""
    drift = []
    for r in rows:
        seen, planned = r["observed"], r["planned"]
        if not seen or seen.get("tokens") is None or not planned.get("tokens"):
            continue
        if abs(seen["tokens"] - planned["tokens"]) > KV_DRIFT_SHARE * planned["tokens"]:
            blocks = f" ({seen['blocks']} blocks of {seen['block_size']})" if seen.get("blocks") is not None else ""
            drift.append(_finding("kv_cache_off_plan", f"replica {r['replica_id']}: the engine reports "
                                  f"{seen['tokens']} KV tokens{blocks}, planned {planned['tokens']} "
                                  f"({r['diff_pct']:+.2f}%, {seen['source']})", service=r["service"], host=r["host"]))
    return drift


def memory_below_drift(rows: list) -> list:
    """memory_below_plan: a GPU with planned instances uses more than 5% less than planned (an engine
    started with a smaller share than the plan's, or not started)."""
    return [_finding("memory_below_plan", f"uses {r['used_mib']} MiB, planned {r['planned_mib']} MiB "
                     f"({r['diff_pct']:+.2f}%)", gpu=r["gpu"], host=r["host"])
            for r in rows if r["planned_mib"] and r["used_mib"] < r["planned_mib"] * (1 - MEMORY_DRIFT_SHARE)]


def ollama_ps_drift(rows: list) -> list:
    """ollama_offloaded, ollama_memory_off_plan, ollama_context_off_plan: a loaded model as `ollama ps`
    reports it. A model that is not loaded (keep_alive expired, never asked) is not drift."""
    drift = []
    for r in rows:
        seen = r["observed"]
        if not seen:
            continue
        where = {"service": r["service"], "host": r["host"]}
        if seen["gpu_percent"] != 100:
            drift.append(_finding("ollama_offloaded", f"{r['tag']} runs on {seen['processor'] or 'an unknown device'}"
                                  ", planned entirely on its GPUs", **where))
        planned_bytes = r["planned"]["mib"] * 1024 * 1024
        if seen["size_bytes"] is not None and not (seen["size_bytes"] * (1 - OLLAMA_DRIFT_SHARE) <= planned_bytes
                                                   <= seen["size_max_bytes"] * (1 + OLLAMA_DRIFT_SHARE)):
            drift.append(_finding("ollama_memory_off_plan", f"{r['tag']} holds {seen['size']}, planned "
                                  f"{r['planned']['mib']} MiB ({r['diff_pct']:+.2f}%)", **where))
        context = r["planned"]["context"]
        if context and seen["context"] and seen["context"] != context:
            drift.append(_finding("ollama_context_off_plan", f"{r['tag']} runs with a context of {seen['context']} "
                                  f"tokens, planned {context}", **where))
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
    observed = data.get("observed") or {}
    lines += _format_kv(observed.get("kv_cache") or [])
    planned_gpu = {r["gpu"]: r for r in observed.get("memory") or []}
    gpu_lines = []
    for host, info in sorted((data.get("hosts") or {}).items()):
        for g in info["gpus"]:
            device = f"{host}:{g['index']}"
            plan_row = planned_gpu.get(device)
            vs = (f"  planned {plan_row['planned_mib']} MiB ({_signed(plan_row['diff_pct'])})" if plan_row else "")
            gpu_lines.append(f"{device:22} {g['name'][:20]:20} {g['used_mib']:>7} / {g['memory_mib']} MiB{vs}")
        for u in info["units"]:
            gpu_lines.append(f"{host:22} {u['unit']:36} {u['active']} ({u['sub']})")
    if gpu_lines:
        lines += ["", *gpu_lines]
    lines += _format_ollama(observed.get("ollama") or [])
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


def _signed(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:+.2f}%"


def _format_kv(rows: list) -> list:
    """The KV cache of every running vLLM replica: the plan's figure and the engine's own."""
    if not rows:
        return []
    lines = ["", f"{'kv cache':22} {'replica':10} {'planned':>9} {'observed':>9} {'diff':>8}  "
             f"{'blocks planned/observed (size)':32} source"]
    for r in rows:
        seen, planned = r["observed"] or {}, r["planned"]
        if r["runner"] != "generate":
            kept = seen.get("blocks") if seen else None
            note = ("pooling model: the engine is up and logged no KV cache size (it keeps none)"
                    if seen and seen.get("no_kv_cache") else
                    f"pooling model: the engine reports no KV cache ({seen.get('tokens')} tokens, {kept} block(s), "
                    f"{seen.get('source')})" if seen else "no engine report")
            lines.append(f"{r['service'][:22]:22} {str(r['replica_id'])[:10]:10} {'-':>9} {'-':>9} {'-':>8}  {note}")
            continue
        tokens = "-" if seen.get("tokens") is None else str(seen["tokens"])
        size = seen.get("block_size") or planned["block_size"] or "-"
        blocks = (f"{planned['blocks'] if planned['blocks'] is not None else '-'}/"
                  f"{seen['blocks'] if seen.get('blocks') is not None else '-'} ({size})")
        source = seen.get("source") or "no engine report"
        lines.append(f"{r['service'][:22]:22} {str(r['replica_id'])[:10]:10} {planned['tokens'] or '-':>9} "
                     f"{tokens:>9} {_signed(r['diff_pct']):>8}  {blocks:32} {source}")
    return lines


def _format_ollama(rows: list) -> list:
    if not rows:
        return []
    lines = ["", f"{'ollama':22} {'host':18} {'model':24} {'planned':>10} {'ollama ps':>10} {'diff':>8}  "
             "processor, context"]
    for r in rows:
        seen = r["observed"]
        if seen:
            tail = f"{seen['processor']}, {seen['context'] or '?'} (planned {r['planned']['context'] or '?'})"
            size = seen["size"]
        else:
            tail, size = (f"not read: {r['error']}" if r["rc"] else "not loaded (idle: keep_alive)"), "-"
        lines.append(f"{r['service'][:22]:22} {r['host'][:18]:18} {r['tag'][:24]:24} "
                     f"{round(r['planned']['mib']):>6} MiB {size:>10} {_signed(r['diff_pct']):>8}  {tail}")
    return lines
