"""Seed 004's multi-model server on the sandbox (issue 13): strategies/sandbox-routed.yml, five chat
model names over SmolLM2 (general always loaded; coding, technical, multilingual and multimodal on
demand, idle unload 30 s, at most 2 loaded) and MiniLM scoring the domains. Checked on Ray 2.60
itself:

- after the apply no on-demand model has a replica (Serve's own table, through `gpufleet status`);
- a request without a model whose text is about code is routed to smollm2-coder, which loads
  (cold start measured) and answers under its own name; a multilingual one loads a second model;
- the cap: with 2 loaded, a request for a third is held, then answered 503 with Retry-After, and
  Serve's table still shows it without a replica;
- once idle for idle_unload_s Serve's table is empty for both, and the last two models load
  together (every model touched); /health, /stats and /v1/models agree with Serve at each step;
- every labelled prompt of tests/data/route_prompts.yml (50, five domains) goes to POST /route:
  at least 90% land on their domain's model; the scoring time is printed.

The router holds a request for a deployment with no replica until one runs (its handles are made
with _check_exists=False; Serve's handle reports the queued request to the autoscaler, which scales
up from zero). SmolLM2 takes no images, so image routing is proven in tests/test_router.py only.
"""
from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from openai import APIStatusError, OpenAI
from sandbox_cli import gpufleet, status

from gpufleet import endpoint_key
from gpufleet.serve_config import llm_deployments

REPO = Path(__file__).resolve().parents[1]
IDLE_UNLOAD_S = 30  # past the cap's 30 s wait: the third model is refused before a slot frees
ENDPOINT = "http://10.89.0.10:8000"
MODEL_OF = {"chat": "smollm2", "embed": "minilm", "coder": "smollm2-coder", "technical": "smollm2-technical",
            "multilingual": "smollm2-multilingual", "multimodal": "smollm2-multimodal"}
DOMAIN_MODEL = {"general": "smollm2", "coding": "smollm2-coder", "technical": "smollm2-technical",
                "multilingual": "smollm2-multilingual", "multimodal": "smollm2-multimodal"}
MIN_ACCURACY = 0.9


def running(sandbox) -> dict:
    """service -> RUNNING replicas in Serve's table."""
    deployments = {name: dep for name, (_, dep) in llm_deployments(status(sandbox)["applications"]).items()}
    return {name: sum(r["state"] == "RUNNING" for r in dep["replicas"]) for name, dep in deployments.items()}


def endpoint(sandbox, path: str, body: dict | None = None) -> dict:
    key = endpoint_key.read_key(sandbox)
    headers = {"Authorization": f"Bearer {key}"}
    answer = (httpx.post(ENDPOINT + path, json=body, headers=headers, timeout=60) if body is not None
              else httpx.get(ENDPOINT + path, headers=headers, timeout=60))
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
    return answer.json()


def assert_endpoints_agree_with_ray(sandbox) -> dict:
    """/health, /stats and /v1/models against Serve's replica table read by `gpufleet status`
    (the router reads it at most once a second: read the endpoints, then Ray, then compare)."""
    health, stats, listing = (endpoint(sandbox, p) for p in ("/health", "/stats", "/v1/models"))
    time.sleep(1.5)
    replicas = running(sandbox)
    loaded = sorted(MODEL_OF[name] for name, n in replicas.items() if n)
    assert sorted(health["loaded"]) == loaded == sorted(stats["models_loaded"]), (health, stats, replicas)
    assert health["models_loaded"] == len(loaded) and health["models_available"] == len(MODEL_OF)
    assert health["max_loaded_models"] == 2 == stats["max_loaded_models"]
    for name, model in MODEL_OF.items():
        assert stats["models"][model]["replicas"] == replicas[name], (model, stats["models"][model], replicas)
    cards = {card["id"]: card["metadata"]["gpufleet"] for card in listing["data"]}
    assert {m: c["state"] == "loaded" for m, c in cards.items()} == {m: m in loaded for m in MODEL_OF.values()}
    return stats


@pytest.mark.sandbox
def test_routed_models_load_on_demand_hold_the_cap_and_unload_when_idle(sandbox):
    try:
        assert gpufleet("apply", "-i", sandbox, "-s", "sandbox-routed", "--yes") == 0
        replicas = running(sandbox)
        assert sorted(n for n, c in replicas.items() if c) == ["chat", "embed"], replicas
        assert_endpoints_agree_with_ray(sandbox)

        # routing by content on the labelled prompts (POST /route: the decision, nothing generated)
        prompts = yaml.safe_load((REPO / "tests/data/route_prompts.yml").read_text())
        decisions = [(domain, endpoint(sandbox, "/route", {"messages": [{"role": "user", "content": text}]}))
                     for domain, texts in prompts.items() for text in texts]
        right = sum(decision["model"] == DOMAIN_MODEL[domain] for domain, decision in decisions)
        scoring_ms = statistics.median(d["seconds"] for _, d in decisions) * 1000
        print(f"routing by content: {right}/{len(decisions)} labelled prompts to their domain's model; "
              f"scoring p50 {scoring_ms:.1f} ms", file=sys.stderr)
        assert right >= MIN_ACCURACY * len(decisions), [(d, x["domain"]) for d, x in decisions
                                                        if x["model"] != DOMAIN_MODEL[d]]

        client = OpenAI(base_url=ENDPOINT + "/v1", api_key=endpoint_key.read_key(sandbox), timeout=300, max_retries=0)

        def ask(model: str, text: str = "Say hello."):
            messages = [{"role": "user", "content": text}]
            return client.chat.completions.create(model=model, max_tokens=8, messages=messages)

        # two models loaded by routed requests, at once: the cap lets both through
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            code = pool.submit(ask, "auto", "My Python function returns None instead of the list, how do I fix it?")
            words = pool.submit(ask, "auto", "Translate 'good night and sweet dreams' into French.")
            code, words = code.result(), words.result()
        cold_start_s = time.monotonic() - started
        assert (code.model, words.model) == ("smollm2-coder", "smollm2-multilingual")
        assert code.choices[0].message.content
        stats = assert_endpoints_agree_with_ray(sandbox)
        assert stats["models"]["smollm2-coder"]["loads"] == 1 == stats["models"]["smollm2-multilingual"]["loads"]
        assert stats["models"]["smollm2-coder"]["last_load_s"] > 0

        # the cap: 2 loaded, so a third is held, then refused
        started = time.monotonic()
        with pytest.raises(APIStatusError) as refused:
            ask("smollm2-technical")
        held_s = time.monotonic() - started
        assert refused.value.status_code == 503, refused.value
        retry_after = int(refused.value.response.headers["retry-after"])
        assert 1 <= retry_after <= IDLE_UNLOAD_S
        assert running(sandbox)["technical"] == 0

        started = time.monotonic()
        while (running(sandbox)["coder"] or running(sandbox)["multilingual"]) and \
                time.monotonic() - started < IDLE_UNLOAD_S + 180:
            time.sleep(5)
        unloaded_after_s = time.monotonic() - started + held_s
        replicas = running(sandbox)
        assert replicas["coder"] == 0 == replicas["multilingual"], replicas

        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, ["smollm2-technical", "smollm2-multimodal"]))
        second_cold_start_s = time.monotonic() - started
        assert [a.model for a in answers] == ["smollm2-technical", "smollm2-multimodal"]
        replicas = running(sandbox)
        assert (replicas["technical"], replicas["multimodal"], replicas["coder"], replicas["multilingual"]) == (
            1, 1, 0, 0), replicas
        stats = assert_endpoints_agree_with_ray(sandbox)
        assert stats["models"]["smollm2-technical"]["loads"] == 1
        general = ask("auto", "Good morning! How are you today?")
        assert general.model == "smollm2"
        print(f"on demand: two models loaded together by routed requests in {cold_start_s:.1f} s; with the cap of 2 "
              f"taken, a third refused after {held_s:.1f} s (503, Retry-After {retry_after} s); both idle ones "
              f"without a replica {unloaded_after_s:.0f} s after the refusal began (idle_unload_s {IDLE_UNLOAD_S}); "
              f"the last two loaded together in {second_cold_start_s:.1f} s", file=sys.stderr)
        assert unloaded_after_s >= IDLE_UNLOAD_S
    finally:
        assert gpufleet("apply", "-i", sandbox, "-s", "sandbox", "--yes") == 0
