"""Monitoring on the podman sandbox (marker `sandbox`: `pytest -m sandbox`): the real Prometheus that
site.yml deploys on sandbox-head (inventory/sandbox sets gpufleet_monitoring_enabled) scrapes every
target, holds the plan's figures, and answers every query of the gpufleet Grafana dashboard with
series (Grafana itself is not installable here), except the targets the dashboard marks GPU-only,
which must answer nothing here. Prometheus is reached from inside the head, on its loopback.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sandbox_cli import ensure_applied, status

from gpufleet import endpoint_key
from gpufleet.api import plan_from_inventory

REPO = Path(__file__).resolve().parents[1]
HEAD = "sandbox-head"
PROMETHEUS = "http://127.0.0.1:9090"
ENDPOINT = "http://10.89.0.10:8000/v1"
DASHBOARD = REPO / "monitoring/grafana/dashboards/gpufleet.json"
NODES = {"sandbox-head": "10.89.0.10", "sandbox-worker-1": "10.89.0.11", "sandbox-worker-2": "10.89.0.12"}


def podman_exec(host: str, *argv, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "exec", host, *argv], capture_output=True, text=True, timeout=timeout)


def prom(path: str, **params) -> dict:
    """GET Prometheus' HTTP API from inside the head (it listens on the head's loopback only)."""
    args = ["curl", "-sf", "-m", "30", "-G", PROMETHEUS + path]
    for key, value in params.items():
        args += ["--data-urlencode", f"{key}={value}"]
    run = podman_exec(HEAD, *args)
    assert run.returncode == 0, (path, params, run.stdout, run.stderr)
    data = json.loads(run.stdout)
    assert data["status"] == "success", data
    return data["data"]


def query(expr: str) -> list:
    return prom("/api/v1/query", query=expr)["result"]


def ansible_playbook(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([Path(sys.executable).parent / "ansible-playbook", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def monitored(sandbox):
    """Strategy sandbox applied (by this fixture only if status says otherwise) and Prometheus ready."""
    ensure_applied(sandbox)
    if podman_exec(HEAD, "curl", "-sf", "-m", "10", PROMETHEUS + "/-/ready").returncode != 0:
        run = ansible_playbook("playbooks/monitoring.yml", "-i", sandbox, "-e", "strategy=sandbox")
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return sandbox


@pytest.mark.sandbox
def test_monitoring_play_changes_nothing_once_applied(monitored):
    """site.yml (or the fixture) deployed it; a second run of the play reports no change on any node."""
    run = ansible_playbook("playbooks/monitoring.yml", "-i", monitored, "-e", "strategy=sandbox")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    recap = dict(re.findall(r"^(sandbox-\S+)\s*:\s*ok=\d+\s+changed=(\d+)", run.stdout, re.M))
    changed, task = [], None
    for line in run.stdout.splitlines():
        heading = re.match(r"(?:TASK|RUNNING HANDLER) \[(.*)\]", line)
        task = heading.group(1) if heading else task
        if line.startswith("changed: ["):
            changed.append((task, line))
    assert recap == {host: "0" for host in NODES}, (changed, run.stdout[-3000:])


@pytest.mark.sandbox
def test_every_prometheus_target_is_up(monitored):
    deadline = time.monotonic() + 120
    while True:
        targets = prom("/api/v1/targets", state="active")["activeTargets"]
        down = [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"])
                for t in targets if t["health"] != "up"]
        if not down or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert down == [], down
    by_job: dict = {}
    for t in targets:
        by_job.setdefault(t["labels"]["job"], set()).add(t["scrapeUrl"])
    assert set(by_job) == {"prometheus", "ray", "node"}
    # Ray's service-discovery file: every node's metrics agent (plus the head's dashboard and autoscaler)
    assert {f"http://{ip}:8080/metrics" for ip in NODES.values()} <= by_job["ray"]
    assert by_job["node"] == {f"http://{ip}:9100/metrics" for ip in NODES.values()}
    hosts = {t["labels"]["host"] for t in targets if t["labels"]["job"] == "node"}
    assert hosts == set(NODES)


@pytest.mark.sandbox
def test_prometheus_listens_on_the_heads_loopback_only(monitored):
    listening = podman_exec(HEAD, "ss", "-Hltn").stdout.split("\n")
    ports = [line.split()[3] for line in listening if line.strip() and line.split()[3].endswith(":9090")]
    assert ports == ["127.0.0.1:9090"], listening
    assert podman_exec("sandbox-worker-1", "curl", "-sf", "-m", "5", "http://10.89.0.10:9090/-/ready").returncode != 0


@pytest.mark.sandbox
def test_the_plans_figures_are_in_prometheus(monitored):
    plan = plan_from_inventory(monitored, "sandbox")
    assert [r["metric"]["strategy"] for r in query("gpufleet_plan_info")] == ["sandbox"]
    planned = {(r["metric"]["host"], r["metric"]["device"]): float(r["value"][1])
               for r in query("gpufleet_plan_device_planned_mib")}
    assert planned == {(d["host"], str(d["index"])): d["planned_mib"] for d in plan["gpus"]}
    chat = next(s for s in plan["services"] if s["name"] == "chat")
    kv = [(r["metric"]["deployment"], r["metric"]["host"], float(r["value"][1]))
          for r in query("gpufleet_plan_kv_cache_tokens")]
    assert kv == [("LLMServer:chat", chat["placements"][0]["host"], chat["kv_cache_tokens"])]


def dashboard_targets() -> list:
    return [(panel["title"], t) for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


def api_key() -> str:
    """The endpoint's API key, made on the first apply and kept in the controller's cache."""
    return endpoint_key.read_key(str(REPO / "inventory/sandbox"))


def background_load():
    """Two clients sending chat, streaming and embeddings through the sandbox endpoint (bench/load.py)."""
    spec = importlib.util.spec_from_file_location("load", REPO / "bench/load.py")
    load = importlib.util.module_from_spec(spec)
    sys.modules["load"] = load  # dataclasses look their module up
    spec.loader.exec_module(load)
    return load.Background(ENDPOINT, {"chat": "smollm2", "embed": "minilm"}, mix="chat=2,stream=1,embed=1",
                           concurrency=2, api_key=api_key())


def unknown_model_request() -> int:
    """One request for a model the endpoint does not serve (an error answer for the errors panel)."""
    body = json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(ENDPOINT + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key()}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.sandbox
def test_every_dashboard_query_returns_series(monitored):
    """Under real traffic, each panel query of the gpufleet dashboard returns series from the sandbox's
    Prometheus; the targets marked gpufleetGpuOnly (with their reason) return none here."""
    targets = dashboard_targets()
    gpu_only = [(title, t) for title, t in targets if t.get("gpufleetGpuOnly")]
    wanted = {(title, t["refId"]): t["expr"] for title, t in targets if not t.get("gpufleetGpuOnly")}
    assert len(gpu_only) <= 2 and len(wanted) >= 20
    assert unknown_model_request() >= 400
    empty: dict = dict(wanted)
    with background_load() as load:
        deadline = time.monotonic() + 120
        while empty and time.monotonic() < deadline:
            time.sleep(5)
            empty = {key: expr for key, expr in empty.items() if not query(expr)}
    assert load.summary["requests"] > 0, load.summary
    assert empty == {}, f"panel queries without series after 120 s of traffic: {empty}"
    for title, t in gpu_only:
        assert query(t["expr"]) == [], (title, t["expr"], "returns series without GPUs: not GPU-only")


@pytest.mark.sandbox
def test_status_reads_the_engines_from_prometheus(monitored):
    """With monitoring deployed, `gpufleet status` takes the engines' KV cache gauges from Prometheus
    (cluster_probe.py prometheus, on the head) and they agree with the plan as the engines' own do."""
    data = status(monitored)
    assert data["observed_from"] == "prometheus", data["errors"]
    rows = {r["service"]: r for r in data["observed"]["kv_cache"]}
    assert rows["chat"]["observed"]["source"] == "prometheus", rows["chat"]
    assert abs(rows["chat"]["diff_pct"]) <= 2, rows["chat"]
    assert data["drift"] == []
