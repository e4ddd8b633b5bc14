#!/usr/bin/env python3
"""Read-only look at a live Ray cluster from its head; prints one JSON document.

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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(probe(argv[0] if argv else "http://127.0.0.1:8265")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
