"""On-demand services on the sandbox (issue 13): `replicas: {min: 0, initial: 0, idle_unload_s}`
becomes Serve autoscaling with min_replicas 0 and downscale_to_zero_delay_s (gpufleet.serve_config),
and `max_loaded_models` the router's cap. Checked on Ray 2.60 itself, two on-demand services under
a cap of 1: neither has a replica after the apply; the first request to one starts its replica and
is answered (the cold start is measured); a request to the other meanwhile is held and answered 503
with Retry-After while Serve's table shows it still without a replica; once the first is idle
for idle_unload_s Serve's own replica table is empty for it, and the second loads. /health, /stats
and /v1/models are compared with Serve's replica table at each step. The router holds a request for
a deployment with no replica until one runs (its handles are made with _check_exists=False; Serve's
handle reports the queued request to the autoscaler, which scales up from zero).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import APIStatusError, OpenAI
from sandbox_cli import gpufleet, status

from gpufleet import endpoint_key
from gpufleet.serve_config import llm_deployments

REPO = Path(__file__).resolve().parents[1]
IDLE_UNLOAD_S = 20
ENDPOINT = "http://10.89.0.10:8000"
LAZY_SERVICE = """\
  - name: {name}
    model: HuggingFaceTB/SmolLM2-135M-Instruct
    model_source: /var/lib/gpufleet/models/smollm2-135m-instruct
    engine: vllm
    engine_args: {{dtype: bfloat16, max_model_len: 512, gpu_memory_utilization: 0.3, enforce_eager: true}}
    replicas: {{min: 0, max: 1, initial: 0, idle_unload_s: {idle}}}
    placement:
      label_selector: {{gpufleet.io/host: sandbox-worker-2}}
    route: {{model_name: {model}}}
"""
LAZY = ((REPO / "strategies" / "sandbox.yml").read_text().replace("name: sandbox\n", "name: sandbox-lazy\n")
        .replace("\nservices:\n", "\nmax_loaded_models: 1\nservices:\n")
        + LAZY_SERVICE.format(name="chat-lazy", model="smollm2-lazy", idle=IDLE_UNLOAD_S)
        + LAZY_SERVICE.format(name="chat-lazy-2", model="smollm2-lazy-2", idle=IDLE_UNLOAD_S))


def running_replicas(sandbox, service: str) -> int:
    deployments = {name: dep for name, (_, dep) in llm_deployments(status(sandbox)["applications"]).items()}
    return sum(r["state"] == "RUNNING" for r in deployments[service]["replicas"])


def endpoint_json(sandbox, path: str) -> dict:
    key = endpoint_key.read_key(sandbox)
    answer = httpx.get(ENDPOINT + path, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
    return answer.json()


def assert_endpoints_agree_with_ray(sandbox) -> dict:
    """/health, /stats and /v1/models against Serve's replica table read by `gpufleet status`
    (the router reads it at most once a second: read the endpoints, then Ray, then compare)."""
    health, stats, listing = (endpoint_json(sandbox, p) for p in ("/health", "/stats", "/v1/models"))
    time.sleep(1.5)
    deployments = {name: dep for name, (_, dep) in llm_deployments(status(sandbox)["applications"]).items()}
    running = {name: sum(r["state"] == "RUNNING" for r in dep["replicas"]) for name, dep in deployments.items()}
    model_of = {"chat": "smollm2", "embed": "minilm", "chat-lazy": "smollm2-lazy",
                "chat-lazy-2": "smollm2-lazy-2"}
    loaded = sorted(model_of[name] for name, n in running.items() if n)
    assert sorted(health["loaded"]) == loaded == sorted(stats["models_loaded"]), (health, stats, running)
    assert health["models_loaded"] == len(loaded) and health["models_available"] == 4
    assert health["max_loaded_models"] == 1 == stats["max_loaded_models"]
    for name, model in model_of.items():
        assert stats["models"][model]["replicas"] == running[name], (model, stats["models"][model], running)
    cards = {card["id"]: card["metadata"]["gpufleet"] for card in listing["data"]}
    assert {m: c["state"] == "loaded" for m, c in cards.items()} == {m: m in loaded for m in model_of.values()}
    return stats


@pytest.mark.sandbox
def test_on_demand_services_load_on_first_request_hold_the_cap_and_unload_when_idle(sandbox, tmp_path):
    folder = tmp_path / "strategies"
    folder.mkdir()
    (folder / "sandbox-lazy.yml").write_text(LAZY)
    try:
        assert gpufleet("apply", "-i", sandbox, "-s", "sandbox-lazy", "--strategies-dir", str(folder), "--yes") == 0
        assert running_replicas(sandbox, "chat-lazy") == 0 == running_replicas(sandbox, "chat-lazy-2")
        assert_endpoints_agree_with_ray(sandbox)
        client = OpenAI(base_url=ENDPOINT + "/v1", api_key=endpoint_key.read_key(sandbox), timeout=300, max_retries=0)

        def ask(model: str):
            return client.chat.completions.create(model=model, max_tokens=8,
                                                  messages=[{"role": "user", "content": "Say hello."}])

        started = time.monotonic()
        answer = ask("smollm2-lazy")
        cold_start_s = time.monotonic() - started
        assert answer.choices[0].message.content and answer.model == "smollm2-lazy"
        assert running_replicas(sandbox, "chat-lazy") == 1
        stats = assert_endpoints_agree_with_ray(sandbox)
        assert stats["models"]["smollm2-lazy"]["requests"] == 1 and stats["models"]["smollm2-lazy"]["loads"] == 1
        assert stats["models"]["smollm2-lazy"]["last_load_s"] > 0

        # the cap: chat-lazy holds the one slot, so chat-lazy-2 is held, then refused
        started = time.monotonic()
        with pytest.raises(APIStatusError) as refused:
            ask("smollm2-lazy-2")
        held_s = time.monotonic() - started
        assert refused.value.status_code == 503, refused.value
        retry_after = int(refused.value.response.headers["retry-after"])
        assert 1 <= retry_after <= IDLE_UNLOAD_S
        assert running_replicas(sandbox, "chat-lazy-2") == 0

        started = time.monotonic()
        while running_replicas(sandbox, "chat-lazy") and time.monotonic() - started < IDLE_UNLOAD_S + 180:
            time.sleep(5)
        unloaded_after_s = time.monotonic() - started + held_s
        assert running_replicas(sandbox, "chat-lazy") == 0

        started = time.monotonic()
        answer = ask("smollm2-lazy-2")
        second_cold_start_s = time.monotonic() - started
        assert answer.model == "smollm2-lazy-2" and running_replicas(sandbox, "chat-lazy-2") == 1
        assert running_replicas(sandbox, "chat-lazy") == 0
        stats = assert_endpoints_agree_with_ray(sandbox)
        assert stats["models"]["smollm2-lazy-2"]["loads"] == 1
        print(f"on demand: cold start {cold_start_s:.1f} s; with the cap of 1 taken, a request for the other model "
              f"refused after {held_s:.1f} s (503, Retry-After {retry_after} s); no replica of the first "
              f"{unloaded_after_s:.0f} s after its request (idle_unload_s {IDLE_UNLOAD_S}); the second's cold start "
              f"{second_cold_start_s:.1f} s", file=sys.stderr)
        assert unloaded_after_s >= IDLE_UNLOAD_S
    finally:
        assert gpufleet("apply", "-i", sandbox, "-s", "sandbox", "--yes") == 0
