"""An on-demand service on the sandbox (issue 13): `replicas: {min: 0, initial: 0, idle_unload_s}`
becomes Serve autoscaling with min_replicas 0 and downscale_to_zero_delay_s (gpufleet.serve_config).
Checked on Ray 2.60 itself: the deployment starts with no replica, the first request through the
endpoint starts one and is answered (the cold start is measured), and after the idle delay Serve's
own replica table is empty again. The router holds a request for a deployment with no replica
until one runs (its handles are made with _check_exists=False; Serve's handle reports the queued
request to the autoscaler, which scales up from zero).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from openai import OpenAI
from sandbox_cli import gpufleet, status

from gpufleet import endpoint_key
from gpufleet.serve_config import llm_deployments

REPO = Path(__file__).resolve().parents[1]
IDLE_UNLOAD_S = 20
LAZY = (REPO / "strategies" / "sandbox.yml").read_text().replace("name: sandbox\n", "name: sandbox-lazy\n") + f"""\
  - name: chat-lazy
    model: HuggingFaceTB/SmolLM2-135M-Instruct
    model_source: /var/lib/gpufleet/models/smollm2-135m-instruct
    engine: vllm
    engine_args: {{dtype: bfloat16, max_model_len: 512, gpu_memory_utilization: 0.3, enforce_eager: true}}
    replicas: {{min: 0, max: 1, initial: 0, idle_unload_s: {IDLE_UNLOAD_S}}}
    placement:
      label_selector: {{gpufleet.io/host: sandbox-worker-2}}
    route: {{model_name: smollm2-lazy}}
"""


def running_replicas(sandbox, service: str) -> int:
    deployments = {name: dep for name, (_, dep) in llm_deployments(status(sandbox)["applications"]).items()}
    return sum(r["state"] == "RUNNING" for r in deployments[service]["replicas"])


@pytest.mark.sandbox
def test_on_demand_service_loads_on_first_request_and_unloads_when_idle(sandbox, tmp_path):
    folder = tmp_path / "strategies"
    folder.mkdir()
    (folder / "sandbox-lazy.yml").write_text(LAZY)
    try:
        assert gpufleet("apply", "-i", sandbox, "-s", "sandbox-lazy", "--strategies-dir", str(folder), "--yes") == 0
        assert running_replicas(sandbox, "chat-lazy") == 0
        client = OpenAI(base_url="http://10.89.0.10:8000/v1", api_key=endpoint_key.read_key(sandbox),
                        timeout=300, max_retries=0)
        started = time.monotonic()
        answer = client.chat.completions.create(model="smollm2-lazy", max_tokens=8,
                                                messages=[{"role": "user", "content": "Say hello."}])
        cold_start_s = time.monotonic() - started
        assert answer.choices[0].message.content and answer.model == "smollm2-lazy"
        assert running_replicas(sandbox, "chat-lazy") == 1
        started = time.monotonic()
        while running_replicas(sandbox, "chat-lazy") and time.monotonic() - started < IDLE_UNLOAD_S + 180:
            time.sleep(5)
        unloaded_after_s = time.monotonic() - started
        print(f"on demand: cold start {cold_start_s:.1f} s, no replica {unloaded_after_s:.0f} s after the request "
              f"(idle_unload_s {IDLE_UNLOAD_S})", file=sys.stderr)
        assert running_replicas(sandbox, "chat-lazy") == 0
        assert unloaded_after_s >= IDLE_UNLOAD_S
    finally:
        assert gpufleet("apply", "-i", sandbox, "-s", "sandbox", "--yes") == 0
