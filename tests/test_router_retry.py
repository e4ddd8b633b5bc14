"""The router's retry of a request that failed before its first chunk (GpufleetIngress._get_response,
templates/gpufleet_serve_app.py.j2), on the real ray.serve.llm ingress class with its call of the
model deployment scripted (tests/router_retry_probe.py, in its own interpreter). The retry against a
killed engine on the sandbox is tests/test_sandbox_faults.py (fault a)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parent / "router_retry_probe.py"


@pytest.fixture(scope="module")
def cases() -> dict:
    run = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_failure_before_the_first_chunk_goes_to_the_other_deployment(cases):
    for name in ("first deployment died, second answers", "first answered 500, second answers"):
        case = cases[name]
        assert case["result"] == ["chunk-1", "chunk-2"], (name, case)
        assert len(case["picked"]) == 2 and case["picked"][0] != case["picked"][1], (name, case)


def test_each_deployment_is_tried_once_then_the_error_is_the_callers(cases):
    every = cases["every deployment died"]
    assert every["calls"] == ["died", "died"] and sorted(every["picked"]) == ["handle-0", "handle-1"], every
    assert every["result"] == ["raised RuntimeError"]
    assert cases["one deployment, it died"]["calls"] == ["died"]
    assert cases["one deployment, it died"]["result"] == ["raised RuntimeError"]


def test_a_client_error_is_not_retried(cases):
    """An unknown model fails before any deployment is picked: answered once (a count of picks would
    never reach the deployments' number and retry forever)."""
    assert cases["unknown model"] == {"calls": ["404"], "picked": [], "result": ["raised HTTPException 404"]}
