#!/usr/bin/env python3
"""Read-only look at a live Ray cluster; prints one JSON document.

`cluster_probe.py [DASHBOARD]` on the head: nodes and Serve (below).
`cluster_probe.py engines METRICS_URL [LOG_DIR]` on every node: what the vLLM engines of that node
report about their KV cache, read two ways. (1) vLLM's `vllm:cache_config_info` gauge, which Ray Serve
LLM exports through Ray's metrics agent when the LLMConfig has `log_engine_metrics: true`
(ray/llm/_internal/serve/engines/vllm/vllm_engine.py: RayPrometheusStatLogger): the Prometheus lines of
METRICS_URL (the node's `--metrics-export-port`) that carry it. (2) The engines' startup line
"<DEVICE> KV cache size: N tokens" in the Ray logs of the node (LOG_DIR, default
/tmp/ray/session_latest/logs), from the log files of processes still running.
`cluster_probe.py prometheus PROMETHEUS_URL` where Prometheus runs (roles/monitoring): the same gauge
for every node at once, from Prometheus' query API, as Prometheus text lines whose `instance` label
names the node's metrics port.

Run by `playbooks/status.yml` with the Python of the node's Ray venv (it needs `ray` only, not
gpufleet): Ray's state API for the nodes (labels, alive), and the Serve REST API for the
applications, deployments and the node of every replica. Both go through the dashboard address
(argument 1, default http://127.0.0.1:8265) and authenticate with the token Ray itself reads from
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (the ray role's unit environment). Nothing is changed.
"""
from __future__ import annotations

import json
import os
import sys

# Run as a script from src/gpufleet, this folder would shadow the standard library (selectors.py).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _nodes(address: str) -> list:
    from ray.util.state import list_nodes

    nodes = list_nodes(address=address, detail=True, limit=10000, raise_on_missing_output=False)
    out = []
    for n in nodes:
        n = n if isinstance(n, dict) else n.__dict__
        out.append({"node_id": n.get("node_id"), "node_ip": n.get("node_ip"), "state": str(n.get("state")),
                    "is_head_node": bool(n.get("is_head_node")), "labels": dict(n.get("labels") or {}),
                    "resources_total": dict(n.get("resources_total") or {})})
    return out


def _serve(address: str) -> dict:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(address).get_serve_details() or {}
    apps = {}
    for name, app in (details.get("applications") or {}).items():
        deployments = {}
        for dname, dep in (app.get("deployments") or {}).items():
            deployments[dname] = {
                "status": dep.get("status"), "message": dep.get("message") or "",
                "replicas": [{"replica_id": r.get("replica_id"), "state": r.get("state"),
                              "node_id": r.get("node_id"), "node_ip": r.get("node_ip"),
                              "actor_name": r.get("actor_name")} for r in dep.get("replicas") or []],
            }
        apps[name] = {"status": app.get("status"), "message": app.get("message") or "",
                      "route_prefix": app.get("route_prefix"), "deployments": deployments}
    proxy = details.get("http_options") or {}
    return {"applications": apps, "http_port": proxy.get("port"), "http_host": proxy.get("host")}


def probe(address: str) -> dict:
    out: dict = {"address": address, "errors": []}
    for key, fn in (("nodes", _nodes), ("serve", _serve)):
        try:
            out[key] = fn(address)
        except Exception as exc:  # reported as data: status shows what it could read
            out[key] = None
            out["errors"].append(f"{key}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    return out


CACHE_INFO = "cache_config_info"
KV_LINE = "KV cache size:"
# every engine logs this once it is up (v1/engine/core.py); a pooling model's engine logs no KV size
ENGINE_UP_LINE = "init engine (profile, create kv cache"
MAX_LOG_BYTES = 64 * 1024 * 1024  # read no more of one log file
PROMETHEUS_WINDOW = "1d"


def _metrics(url: str) -> list:
    import urllib.request

    with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 - the node's own metrics port
        text = response.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if CACHE_INFO in line and not line.startswith("#")]


def _pid_alive(name: str) -> bool:
    """worker-<worker id>-<job id>-<pid>.err: the process that writes it still runs."""
    pid = os.path.splitext(name)[0].rsplit("-", 1)[-1]
    return not pid.isdigit() or os.path.exists(f"/proc/{pid}")


def _kv_log_lines(log_dir: str) -> list:
    """Each KV-size line of the logs of running workers (worker-*.err/.out) and of Serve replicas
    (serve/replica_<app>_<deployment>_<replica id>.log, whose name carries the replica id)."""
    import glob
    import re

    found = []
    files = glob.glob(os.path.join(log_dir, "worker-*.err")) + glob.glob(os.path.join(log_dir, "worker-*.out"))
    files = [f for f in files if _pid_alive(os.path.basename(f))]
    files += glob.glob(os.path.join(log_dir, "serve", "replica_*.log"))
    for path in sorted(files):
        match = re.search(r"replica_.+_([A-Za-z0-9]+)\.log$", os.path.basename(path))
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_LOG_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        for line in data.splitlines():
            if KV_LINE in line or ENGINE_UP_LINE in line:
                found.append({"file": os.path.relpath(path, log_dir), "line": line.strip()[-400:],
                              "replica_id": match.group(1) if match else None})
    return found


def _read(what: str, fn, arg, errors: list) -> list:
    try:
        return fn(arg)
    except Exception as exc:  # reported as data: status shows what it could read
        errors.append(f"{what}: {type(exc).__name__}: {str(exc).strip()[:200]}")
        return []


def engines(metrics_url: str, log_dir: str) -> dict:
    errors: list = []
    metrics = _read("metrics", _metrics, metrics_url, errors)
    logs = _read("logs", _kv_log_lines, log_dir, errors)
    return {"metrics_url": metrics_url, "metrics": metrics, "logs": logs, "errors": errors}


def _escape(value: str) -> str:
    """A label value as the text exposition format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _prometheus(url: str) -> list:
    import urllib.parse
    import urllib.request

    # The gauge is set once when an engine starts, and Ray's exporter drops a series some time after
    # its last update: the last value of each series within the window (the function drops the name).
    expr = f'last_over_time({{__name__=~".*vllm_{CACHE_INFO}"}}[{PROMETHEUS_WINDOW}])'
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query?{query}", timeout=15) as response:  # noqa: S310
        data = json.load(response)
    if data.get("status") != "success":
        raise RuntimeError(f"Prometheus answered {data.get('status')}: {data.get('error')}")
    lines = []
    for series in data["data"]["result"]:
        labels = dict(series["metric"])
        name = labels.pop("__name__", f"vllm_{CACHE_INFO}")
        quoted = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{quoted}}} {series['value'][1]}")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "prometheus":
        errors: list = []
        metrics = _read("prometheus", _prometheus, argv[1], errors)
        print(json.dumps({"url": argv[1], "metrics": metrics, "errors": errors}))
        return 0
    if argv and argv[0] == "engines":
        url = argv[1] if len(argv) > 1 else "http://127.0.0.1:8080/metrics"
        print(json.dumps(engines(url, argv[2] if len(argv) > 2 else "/tmp/ray/session_latest/logs")))
        return 0
    print(json.dumps(probe(argv[0] if argv else "http://127.0.0.1:8265")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
