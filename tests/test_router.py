"""The router (GpufleetIngress, templates/gpufleet_serve_app.py.j2) on the real ray.serve.llm
ingress class, with its call of the model deployments and Serve's replica table scripted
(tests/router_probe.py, in its own interpreter): the retry of a request that failed before its
first chunk, the cap on loaded on-demand models, /health, /stats and /v1/models. The retry against
a killed engine on the sandbox is tests/test_sandbox_faults.py (fault a); the endpoints against
Ray's own replica table, tests/test_sandbox_on_demand.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parent / "router_probe.py"


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


def test_cap_holds_a_request_back_then_answers_503_with_retry_after(cases):
    """Cap 1 with model a loaded: a request for b waits the cap's wait (2 s here), then 503 with
    Retry-After = a's idle_unload_s after its last use (20 s: a was never used through this router)."""
    held = cases["cap 1, a loaded: b waits, then 503"]
    assert held["status"] == 503 and held["retry_after"] == "20", held
    assert held["seconds"] >= 2.0, held
    assert held["body"]["error"]["code"] == 503 and "(a)" in held["body"]["error"]["message"], held
    assert cases["cap 1, a loaded: a answers at once"]["status"] == 200


def test_cap_lets_the_request_through_once_a_model_unloads(cases):
    """a runs, then stops (STOPPING still holds its memory), then is gone: b is let through only then
    (2 s into a 10 s wait), and its request is counted as the load."""
    through = cases["cap 1, a unloads during the wait: b loads"]
    assert through["status"] == 200 and 2.0 <= through["seconds"] < 10, through
    assert cases["stats after b loaded"]["requests"] == 1
    assert cases["stats after b loaded"]["loads"] == 1 and cases["stats after b loaded"]["in_flight"] == 0


def test_two_models_racing_for_the_last_slot(cases):
    """Cap 2 with a loaded: b and c at once; one is let through, the other is held and refused,
    although Serve's table does not show the first one's replica yet."""
    assert cases["cap 2, a loaded: b and c at once"] == [200, 503]


def test_health_stats_and_models_report_serves_replica_states(cases):
    """a RUNNING, b STARTING, c STOPPING, d nothing."""
    assert cases["health"] == {"status": "healthy", "models_loaded": 1, "models_available": 4, "loaded": ["a"],
                               "loading": ["b"], "max_loaded_models": 3}
    expected = {"a": "loaded", "b": "loading", "c": "unloading", "d": "unloaded"}
    assert {m: v["state"] for m, v in cases["stats"].items()} == expected
    assert cases["stats"]["a"]["replicas"] == 1 and cases["stats"]["b"]["replicas"] == 0
    assert cases["models"] == expected


def test_a_model_whose_only_replica_is_stopping_needs_a_free_slot(cases):
    """Its stopping replica still holds memory and a new one would start beside it."""
    assert cases["cap 1, a only stopping: a again waits, then 503"] == 503


def test_a_lora_style_id_counts_against_its_base_model(cases):
    """ray.serve.llm sends "b:x" to b's deployment, which would load b beyond the cap."""
    assert cases["cap 1, a loaded: b through a LoRA-style id b:x"] == 503


def test_one_load_is_counted_once(cases):
    assert cases["cap 1, two requests for cold b at once: loads"] == 1


def test_an_unreadable_replica_table_holds_nothing_back_and_health_says_so(cases):
    assert cases["table unreadable: request"] == 200
    assert cases["table unreadable: health"] == 503
    assert cases["table unreadable: models"] == ["a", "b"]


# ---- routing by content and fallbacks (the embedding model scripted: router_probe.MARKERS) ----------
def answered_by(case) -> str:
    return case["answer"].split("data:")[0].removeprefix("answer from ")


def test_a_request_without_a_model_goes_to_the_domain_nearest_its_last_user_text(cases):
    # the system message says "python" three times: only the last user message is scored
    assert answered_by(cases["auto, python text"]) == "code"
    assert answered_by(cases["no model, hello"]) == "chat"
    assert answered_by(cases["no model, translate"]) == "polyglot"
    # the domains' examples are embedded once (4 examples in one call), then one call per request
    assert cases["auto, python text"]["calls"] == ["embed 4", "embed 1", "code"]
    assert cases["no model, hello"]["calls"] == ["embed 1", "chat"]


def test_below_min_score_or_unscored_the_default_model_answers(cases):
    assert answered_by(cases["below min_score: default"]) == "chat"
    assert answered_by(cases["embedding fails: default"]) == "chat"


def test_a_tie_goes_to_the_higher_priority_and_a_named_model_is_not_routed(cases):
    assert answered_by(cases["tie: the higher priority"]) == "chat"  # general (5) over multilingual (1)
    assert cases["named model is not routed"]["calls"] == ["polyglot"]


def test_a_request_with_images_goes_only_to_a_model_that_takes_images(cases):
    assert answered_by(cases["image: only a model that takes images"]) == "vision"
    assert cases["image, no model takes images"] == {"raised": "HTTPException 400", "calls": []}


def test_route_endpoint_names_the_model_with_the_scores(cases):
    decision = cases["route endpoint"]
    assert (decision["model"], decision["domain"], decision["images"]) == ("code", "coding", False)
    assert decision["scores"]["coding"] == 1.0 > max(v for d, v in decision["scores"].items() if d != "coding")
    assert decision["seconds"] >= 0


def test_fallback_when_the_model_fails_has_no_replica_or_is_held_by_the_cap(cases):
    assert cases["fallback: code died"]["calls"] == ["code", "chat"]
    assert answered_by(cases["fallback: code died"]) == "chat"
    assert cases["fallback: code has no replica"]["calls"] == ["chat"]  # not sent where nothing serves it
    assert cases["fallback: code held by the cap"]["calls"] == ["chat"]
    assert cases["fallback: code held by the cap"]["seconds"] < 5  # not after the cap's 30 s wait


def test_no_fallback_for_a_lora_id_or_another_call_than_chat_and_completions(cases):
    assert cases["no fallback: a LoRA id"] == {"raised": "RuntimeError", "calls": ["code:adapter"]}
    assert cases["no fallback: tokenize"] == {"raised": "RuntimeError", "calls": ["code"]}


def test_an_image_part_without_a_type_counts_as_an_image(cases):
    assert answered_by(cases["image part without a type"]) == "vision"


# ---- idle: sleep (ray.serve.llm's broadcast to the replicas scripted: vLLM's sleep mode needs a GPU) --
# A sleeping vLLM engine queues requests instead of refusing them (vllm/v1/engine/core.py): every case
# where the router might send a request to a sleeping engine must wake it first.
def test_a_router_that_just_started_wakes_a_sleep_model_before_its_first_request(cases):
    """The router replica before it may have put the model to sleep; waking an awake engine changes
    nothing (vllm/v1/executor/abstract.py: "Executor is not sleeping")."""
    assert cases["first request for a"] == {"status": 200, "calls": [["control-a", "wakeup", {}]]}


def test_an_idle_model_is_put_to_sleep_after_idle_sleep_s(cases):
    """a (idle: sleep, idle_sleep_s 1) answered, then idle: the router asked every replica of its
    deployment to sleep at level 1 (weights kept in host memory); /stats and /health say asleep."""
    case = cases["idle 1 s: a"]
    assert case["calls"] == [["control-a", "sleep", {"level": 1}]] and case["state"] == "asleep", case
    assert (case["health"]["loaded"], case["health"]["asleep"], case["health"]["models_loaded"]) == ([], ["a"], 0)


def test_a_sleeping_model_keeps_its_slot_under_the_cap(cases):
    """Its replica keeps its placement group (Ray keeps its GPU share): with cap 1, b waits and gets
    503, and nothing is asked of a's replicas."""
    assert cases["cap 1, a asleep: b"] == {"status": 503, "calls": []}


def test_a_sleeping_model_is_woken_before_its_request_goes_on(cases):
    assert cases["a again"] == {"status": 200, "calls": [["control-a", "wakeup", {}]]}
    assert cases["stats after the wake"] == {"state": "loaded", "sleeps": 1, "wakes": 2, "requests": 2,
                                             "idle_sleep_s": 1.0}


def test_no_sleep_with_a_request_in_flight_or_while_a_model_loads(cases):
    assert cases["in flight for 60 s: a"] == {"calls": [], "asleep": []}
    assert cases["b loading: a idle"] == {"calls": [], "asleep": []}
    assert cases["idle again: asleep"] == ["a"]


def test_a_model_serve_unloaded_loads_awake(cases):
    assert cases["after Serve unloaded a"] == "unloaded"
    assert cases["a after the unload"] == {"status": 200, "calls": [], "asleep": [], "wake_first": []}


def test_a_failed_sleep_or_wake_leaves_the_model_to_wake_before_its_next_request(cases):
    failed = cases["failed sleep"]
    assert failed["calls"] and all(c == ["control-a", "sleep", {"level": 1}] for c in failed["calls"]), failed
    assert failed["asleep"] == [] and failed["wake_first"] == ["a"], failed
    assert cases["after the failed sleep: a"] == {"status": 200, "calls": [["control-a", "wakeup", {}]]}
    assert cases["failed wake: a"] == {"status": 200, "wake_first": ["a"]}


def test_a_model_that_left_the_sleep_table_is_still_woken(cases):
    assert cases["left the table: a"] == {"status": 200, "calls": [["control-a", "wakeup", {}]]}


def test_a_deployment_without_a_running_replica_yet_is_not_broadcast_to(cases):
    """ray.serve.llm's broadcast would wait 30 s for its replicas."""
    assert cases["not populated: a"] == {"status": 200, "calls": [], "seconds": 0.0}
