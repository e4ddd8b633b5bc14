"""Routing by content and fallbacks in the strategy, the plan and the router's table: what
`routing` and `route: {domain, priority, fallback}` accept and refuse (file, field, fix), how the
plan carries them (with image_input from the catalog) and the `routing` of the router's user_config.
The router's use of them is tests/test_router.py; against the real MiniLM on the sandbox,
tests/test_sandbox_on_demand.py."""
from __future__ import annotations

import copy

import pytest

from gpufleet import serve_config
from gpufleet.catalog import load_catalog
from gpufleet.errors import InputError
from gpufleet.inventory import cluster_from_hostvars
from gpufleet.planner import plan
from gpufleet.strategy import parse_strategy

CLUSTER = cluster_from_hostvars(
    {"ray_head": ["head"], "ray_workers": ["w1"]},
    {"head": {"ansible_host": "10.0.0.1", "gpufleet_gpus": {"count": 0}, "gpufleet_cpu_memory_mib": 0},
     "w1": {"ansible_host": "10.0.0.2", "gpufleet_gpus": {"count": 0}, "gpufleet_cpu_memory_mib": 40_000}})


def chat(name: str, **route) -> dict:
    return {"name": name, "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "engine": "vllm",
            "engine_args": {"dtype": "bfloat16", "max_model_len": 512, "gpu_memory_utilization": 0.1,
                            "enforce_eager": True},
            "replicas": 1, "route": {"model_name": name, **route}}


EMBED = {"name": "embed", "model": "sentence-transformers/all-MiniLM-L6-v2", "engine": "vllm",
         "engine_args": {"dtype": "float32", "max_model_len": 256, "gpu_memory_utilization": 0.05,
                         "enforce_eager": True},
         "replicas": 1, "route": {"model_name": "minilm"}}
ROUTING = {"embedding_model": "minilm", "default_model": "general", "min_score": 0.2,
           "domains": {"coding": ["Fix this Python traceback"], "general": ["Hello, how are you?"]}}


def services() -> list:
    return [chat("coder", domain="coding", priority=3, fallback=["general"]),
            chat("general", domain="general", priority=5), copy.deepcopy(EMBED)]


def refused(data: dict) -> InputError:
    with pytest.raises(InputError) as caught:
        parse_strategy(data, "s.yml")
    return caught.value


@pytest.mark.parametrize("change,field,words", [
    (lambda d: d["routing"].update(embedding_model="nomodel"), "routing.embedding_model", "use one of"),
    (lambda d: d["routing"].update(default_model=None), "routing.default_model", "must be the model_name"),
    (lambda d: d["routing"].update(min_score=2), "routing.min_score", "-1..1"),
    (lambda d: d["routing"].update(domains={}), "routing.domains", "example prompts"),
    (lambda d: d["routing"]["domains"].update(coding=["line\nbreak"]), "routing.domains.coding[0]", "control"),
    (lambda d: d["routing"]["domains"].update(coding=[""]), "routing.domains.coding", "example prompts"),
    (lambda d: d["routing"]["domains"].update(legal=["a contract"]), "routing.domains.legal", "no service has"),
    (lambda d: d["routing"].update(color="red"), "routing", "must be a mapping of"),
    (lambda d: d["services"][0]["route"].update(domain="law"), "services[coder].route.domain", "not in routing"),
    (lambda d: d["services"][0]["route"].update(domain="Coding!"), "services[coder].route.domain", "domain name"),
    (lambda d: d["services"][0]["route"].update(priority=-1), "services[coder].route.priority", "0..100"),
    (lambda d: d["services"][0]["route"].update(priority=True), "services[coder].route.priority", "must be int"),
    (lambda d: d["services"][0]["route"].update(fallback=["ghost"]), "services[coder].route.fallback",
     "not the model_name"),
    (lambda d: d["services"][0]["route"].update(fallback=["coder"]), "services[coder].route.fallback", "itself"),
    (lambda d: d["services"][0]["route"].update(fallback="general"), "services[coder].route.fallback", "a list"),
    (lambda d: d["services"][0]["route"].update(model_name="auto"), "services[coder].route.model_name", "'auto'"),
    (lambda d: d.pop("routing"), "services[coder].route.domain", "needs routing.domains"),
    (lambda d: d["services"][1]["route"].pop("domain"), "services[general].route.priority", "needs route.domain"),
    (lambda d: d["services"][0]["route"].update(fallback=""), "services[coder].route.fallback", "a list"),
    (lambda d: d["services"][0]["route"].update(fallback=["auto"]), "services[coder].route.fallback", "a list"),
    (lambda d: d["services"][2].update(replicas={"min": 0, "max": 1}), "services[embed].replicas",
     "scores every routed request"),
    (lambda d: d["services"].append({**chat("coder-2", domain="general"), "route": {"model_name": "coder"}}),
     "services[coder].route", "another domain, priority or fallback"),
])
def test_bad_routing_names_the_field_and_the_fix(change, field, words):
    data = {"name": "s", "services": services(), "routing": {**ROUTING, "domains": dict(ROUTING["domains"])}}
    change(data)
    error = refused(data)
    assert error.field == field, error
    assert words in str(error) and error.fix, error


def test_the_embedding_model_must_be_an_embedding_model():
    data = {"name": "s", "services": services(), "routing": {**ROUTING, "embedding_model": "general"}}
    result = plan(CLUSTER, load_catalog(), parse_strategy(data, "s.yml")).to_dict()
    assert not result["feasible"]
    assert [e["field"] for e in result["errors"]] == ["routing.embedding_model"]


def test_the_plan_and_the_routers_table_carry_the_routing():
    data = plan(CLUSTER, load_catalog(), parse_strategy({"name": "s", "services": services(), "routing": ROUTING},
                                                        "s.yml")).to_dict()
    assert data["feasible"], data["errors"]
    assert data["routing"] == ROUTING
    routes = {s["name"]: s["route"] for s in data["services"]}
    assert routes == {"coder": {"model_name": "coder", "domain": "coding", "priority": 3, "fallback": ["general"]},
                      "general": {"model_name": "general", "domain": "general", "priority": 5},
                      "embed": {"model_name": "minilm"}}
    table = serve_config.routes(serve_config.service_apps(data), data)["routing"]
    assert table == {**ROUTING, "models": {"coder": {"domain": "coding", "priority": 3, "fallback": ["general"]},
                                           "general": {"domain": "general", "priority": 5}}}


def test_a_vision_model_takes_images_and_a_fallback_alone_makes_a_table():
    cxr = {"name": "cxr", "model": "google/medgemma-4b-it", "engine": "vllm",
           "engine_args": {"dtype": "bfloat16", "max_model_len": 4096, "gpu_memory_utilization": 0.9},
           "replicas": 1, "route": {"model_name": "cxr", "fallback": ["general"]}}
    gpu = cluster_from_hostvars({"ray_head": ["head"], "ray_workers": ["w1"]}, {
        "head": {"ansible_host": "10.0.0.1", "gpufleet_gpus": {"count": 0}},
        "w1": {"ansible_host": "10.0.0.2", "gpufleet_gpus": {"count": 2, "model": "A10", "memory_mib": 23028}}})
    general = {**chat("general"), "engine_args": {"dtype": "bfloat16", "max_model_len": 512,
                                                  "gpu_memory_utilization": 0.1}}
    data = plan(gpu, load_catalog(), parse_strategy({"name": "s", "services": [cxr, general]}, "s.yml")).to_dict()
    assert data["feasible"], data["errors"]
    assert "routing" not in data
    assert next(s for s in data["services"] if s["name"] == "cxr")["route"]["image_input"] is True
    table = serve_config.routes(serve_config.service_apps(data), data)
    assert table["routing"] == {"models": {"cxr": {"fallback": ["general"], "image_input": True}}}


def test_a_plan_without_routing_or_fallback_has_no_routing_table():
    data = plan(CLUSTER, load_catalog(), parse_strategy({"name": "s", "services": [chat("a"), EMBED]},
                                                        "s.yml")).to_dict()
    assert "routing" not in serve_config.routes(serve_config.service_apps(data), data)


@pytest.mark.parametrize("change,field", [
    (lambda d: d["routing"].update(default_model="minilm"), "routing.default_model"),
    (lambda d: d["services"][2]["route"].update(domain="general"), "services[embed].route.domain"),
    (lambda d: d["services"][1]["route"].update(fallback=["minilm"]), "services[general].route.fallback"),
])
def test_an_embedding_model_cannot_answer_chats(change, field):
    data = {"name": "s", "services": services(), "routing": {**ROUTING, "domains": dict(ROUTING["domains"])}}
    change(data)
    result = plan(CLUSTER, load_catalog(), parse_strategy(data, "s.yml")).to_dict()
    assert not result["feasible"]
    assert [e["field"] for e in result["errors"]] == [field], result["errors"]


def test_the_schema_refuses_what_the_checks_refuse():
    import jsonschema

    from gpufleet import schema

    validator = jsonschema.Draft202012Validator(schema.schema("strategy"))
    for example in ("trailing newline\n", "   ", "x" * 5000):
        data = {"name": "s", "services": services(),
                "routing": {**ROUTING, "domains": {**ROUTING["domains"], "coding": [example]}}}
        assert list(validator.iter_errors(data)), example
        with pytest.raises(InputError):
            parse_strategy(data, "s.yml")
    for route in ({"model_name": "a", "fallback": ["auto"]}, {"model_name": "a", "priority": 3}):
        data = {"name": "s", "services": [{**chat("a"), "route": route}]}
        assert list(validator.iter_errors(data)), route
        with pytest.raises(InputError):
            parse_strategy(data, "s.yml")


def test_diff_shows_a_change_of_routing_alone():
    from gpufleet.diff import diff_plans, format_diff

    def planned(routing):
        return plan(CLUSTER, load_catalog(), parse_strategy({"name": "s", "services": services(), "routing": routing},
                                                            "s.yml")).to_dict()
    data = diff_plans(planned(ROUTING), planned({**ROUTING, "min_score": 0.5}))
    assert data["changed"] and all(s["change"] == "unchanged" for s in data["services"])
    assert len(data["router"]) == 1 and data["router"][0].startswith("routing ")
    assert "min_score': 0.5" in format_diff(data)
