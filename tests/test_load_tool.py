"""bench/load.py, the load tool: its bounds and arithmetic, and a run against a port where nothing
listens (real refused connections, counted by cause). Its run against the sandbox endpoint is in
tests/test_cli_apply.py's sandbox tests."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("load", REPO / "bench/load.py")
load = importlib.util.module_from_spec(spec)
sys.modules["load"] = load  # dataclasses look their module up
spec.loader.exec_module(load)


@pytest.mark.parametrize("url", ["http://10.105.20.1:8000/v1", "http://8.8.8.8/v1", "http://[2001:db8::1]:8000/v1"])
def test_targets_outside_loopback_and_the_sandbox_are_refused(url):
    with pytest.raises(SystemExit, match="refusing"):
        load.check_target(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://10.89.0.10:8000/v1", "http://localhost:1/v1"])
def test_loopback_and_the_sandbox_are_allowed(url):
    load.check_target(url)


def test_mix_order_and_refusals():
    assert load.parse_mix("chat=2,stream=1,embed") == ["chat", "chat", "stream", "embed"]
    for bad in ("chat=x", "image=1", ""):
        with pytest.raises(SystemExit):
            load.parse_mix(bad)


def outcome(start, latency, ok=True, cause=""):
    return load.Outcome("chat", start, latency, ok, cause)


def test_longest_stall_counts_from_the_start_to_the_end():
    # successes complete at 1.0, 2.0 and 9.0; the run lasts 10 s; the failure completes at 5.0
    runs = [outcome(0.0, 1.0), outcome(1.5, 0.5), outcome(2.0, 3.0, ok=False, cause="http-500"), outcome(8.0, 1.0)]
    assert load.longest_stall(runs, 10.0) == pytest.approx(7.0)
    assert load.longest_stall([], 4.0) == 4.0


def test_summary_counts_failures_by_cause_and_percentiles():
    runs = [outcome(i, 0.1 * (i + 1)) for i in range(10)]
    runs += [outcome(0, 1, False, "timeout"), outcome(0, 1, False, "http-503")]
    summary = load.summarize(runs, 12.0)
    assert summary["requests"] == 12 and summary["failed"] == 2
    assert summary["failures_by_cause"] == {"timeout": 1, "http-503": 1}
    assert summary["p50_s"] == pytest.approx(0.5) and summary["p99_s"] == pytest.approx(1.0)


def test_a_run_against_a_closed_port_counts_every_refusal(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = load.main(["--url", "http://127.0.0.1:9/v1", "--chat-model", "chat", "--embed-model", "embed",
                    "--duration", "2", "--max-requests", "20", "--concurrency", "2", "--json", str(out)])
    assert rc == 1
    data = json.loads(out.read_text())
    assert data["summary"]["requests"] == 20 == len(data["requests"])
    assert data["summary"]["failures_by_cause"] == {"connection": 20}
    assert {r["kind"] for r in data["requests"]} == {"chat", "stream", "embed"}
    assert "failed 20" in capsys.readouterr().out


@pytest.mark.sandbox
def test_load_on_the_sandbox_endpoint(sandbox, tmp_path, capsys):
    """Two clients for 20 s through the applied sandbox strategy's endpoint: every request answered."""
    out = tmp_path / "load.json"
    rc = load.main(["-i", sandbox, "-s", "sandbox", "--concurrency", "2", "--duration", "20",
                    "--max-requests", "400", "--json", str(out)])
    data = json.loads(out.read_text())
    print(capsys.readouterr().out)
    assert data["url"] == "http://10.89.0.10:8000/v1"
    assert rc == 0 and data["summary"]["failed"] == 0, data["summary"]
    kinds = {r["kind"] for r in data["requests"]}
    assert kinds == {"chat", "stream", "embed"} and data["summary"]["requests"] >= 6
    assert all(r["ttft_s"] for r in data["requests"] if r["kind"] == "stream")


def test_background_load_stops_when_asked():
    """The load the sandbox tests run beside a switch: a thread, stopped on exit, every request counted."""
    import time

    with load.Background("http://127.0.0.1:9/v1", {"chat": "chat"}, mix="chat=1", concurrency=2) as run:
        time.sleep(1.0)
    assert run.summary["requests"] == len(run.outcomes) > 0
    assert run.summary["failures_by_cause"] == {"connection": run.summary["requests"]}
    assert run.elapsed < 10
    with pytest.raises(SystemExit, match="refusing"):
        load.Background("http://8.8.8.8/v1", {"chat": "chat"})
