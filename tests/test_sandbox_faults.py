"""Faults on the sandbox under load (issue 12), each measured with bench/load.py (two clients:
chat, streaming chat and embeddings through the endpoint; loopback and the sandbox's addresses only).

(a) One of two replicas of a model name loses its engine: `kill -9` of the vLLM worker process of
the service `chat` (sandbox-worker-1) while `chat-b` (sandbox-worker-2) serves the same model name
`smollm2`. The router retries a request that failed before its first chunk on the other service
(templates/gpufleet_serve_app.py.j2, GpufleetIngress._get_response), so at most the requests in
flight on the killed engine fail, and Serve restarts the replica (its health check fails).

(d) A strategy that cannot become healthy: `sandbox` plus a service whose model folder is not on its
node. Its new application fails, the serve role restores the last good config, the apply exits 1,
no request of the running strategy fails and `sandbox` is still the applied strategy.

Both strategies are `sandbox` plus one service: chat and embed keep their applications
(gpufleet.serve_config names an application by its code), so applying them starts one engine only,
and applying `sandbox` afterwards stops it again.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sandbox_cli import ensure_applied, gpufleet, status

from gpufleet.cli import main

REPO = Path(__file__).resolve().parents[1]
SANDBOX = (REPO / "strategies" / "sandbox.yml").read_text()
EXTRA_SERVICE = """\
  - name: {name}
    model: HuggingFaceTB/SmolLM2-135M-Instruct
    model_source: {source}
    engine: vllm
    engine_args: {{dtype: bfloat16, max_model_len: 512, gpu_memory_utilization: 0.3, enforce_eager: true}}
    replicas: 1
    placement:
      label_selector: {{gpufleet.io/host: sandbox-worker-2}}
    route: {{model_name: {model_name}}}
"""
PAIR = SANDBOX.replace("name: sandbox\n", "name: sandbox-pair\n") + EXTRA_SERVICE.format(
    name="chat-b", source="/var/lib/gpufleet/models/smollm2-135m-instruct", model_name="smollm2")
BROKEN = SANDBOX.replace("name: sandbox\n", "name: sandbox-broken\n") + EXTRA_SERVICE.format(
    name="chat-missing", source="/var/lib/gpufleet/models/not-shipped-to-any-node", model_name="smollm2-missing")
SUMMARY_KEYS = ("requests", "failed", "failures_by_cause", "longest_stall_s", "elapsed_s")


def in_flight_at(outcomes, moment: float) -> int:
    return sum(1 for o in outcomes if o.start_s <= moment < o.start_s + o.latency_s)


def write_strategy(tmp_path, name: str, text: str) -> Path:
    folder = tmp_path / "strategies"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yml").write_text(text)
    return folder


def engine_pids(host: str) -> list[str]:
    out = subprocess.run(["podman", "exec", host, "pgrep", "-f", "^VLLM::Worker"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.split()


@pytest.fixture
def back_to_sandbox(sandbox):
    yield sandbox
    assert gpufleet("apply", "-i", sandbox, "-s", "sandbox", "--yes") == 0


@pytest.mark.sandbox
def test_fault_a_kill_one_of_two_engines(back_to_sandbox, tmp_path, capsys):
    from test_cli_apply import sandbox_load

    sandbox = back_to_sandbox
    folder = write_strategy(tmp_path, "sandbox-pair", PAIR)
    assert main(["apply", "-i", sandbox, "-s", "sandbox-pair", "--strategies-dir", str(folder), "--yes"]) == 0
    capsys.readouterr()
    pids = engine_pids("sandbox-worker-1")
    assert len(pids) == 1, f"expected one vLLM worker process on sandbox-worker-1: {pids}"
    with sandbox_load() as run:
        started = time.monotonic()  # the load's clock starts within milliseconds of this
        time.sleep(15)
        kill_s = time.monotonic() - started
        subprocess.run(["podman", "exec", "sandbox-worker-1", "kill", "-9", pids[0]], check=True, timeout=60)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # Serve replaces the replica: a new engine process
            time.sleep(5)
            now = engine_pids("sandbox-worker-1")
            if now and now != pids:
                break
        recovered_s = time.monotonic() - started - kill_s
        time.sleep(15)
    summary = run.summary
    # Requests in flight at the kill, on either engine (the load cannot tell which served one): an
    # upper bound of those on the killed one.
    flight = in_flight_at(run.outcomes, kill_s)
    print("fault (a) under load:", {k: summary[k] for k in SUMMARY_KEYS},
          f"in flight at the kill (t={kill_s:.1f}s): {flight}, new engine after {recovered_s:.0f} s", file=sys.stderr)
    assert summary["requests"] > 20
    assert summary["failed"] <= flight, summary
    assert engine_pids("sandbox-worker-1") not in ([], pids), "Serve did not start a new engine on sandbox-worker-1"
    data = status(sandbox)
    assert data["applied"]["strategy"] == "sandbox-pair" and data["drift"] == [], data["drift"]


@pytest.mark.sandbox
def test_fault_d_strategy_that_cannot_become_healthy(back_to_sandbox, tmp_path, capsys):
    from test_cli_apply import sandbox_load

    sandbox = back_to_sandbox
    ensure_applied(sandbox)
    folder = write_strategy(tmp_path, "sandbox-broken", BROKEN)
    with sandbox_load() as run:
        rc = main(["apply", "-i", sandbox, "-s", "sandbox-broken", "--strategies-dir", str(folder), "--yes"])
    out = capsys.readouterr().out
    print("fault (d) under load:", {k: run.summary[k] for k in SUMMARY_KEYS}, file=sys.stderr)
    assert rc == 1, out[-3000:]
    assert "did not become healthy" in out and "restored" in out, out[-3000:]
    assert run.summary["requests"] > 20 and run.summary["failed"] == 0, run.summary
    data = status(sandbox)
    assert data["applied"]["strategy"] == "sandbox" and data["drift"] == [], data["drift"]
    apps = set(data["applications"])
    assert not any("chat-missing" in name for name in apps), apps
