"""gpufleet.transition: the steps from the applied plan to a new one, worked out by hand from the
sandbox inventory's figures (its workers advertise 4 logical CPUs; the tests set the count they
need; one CPU replica asks its bundle's CPU plus the replica actor's, 2 in all; the router 1 CPU on
the head)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gpufleet import serve_config as sc
from gpufleet import transition
from gpufleet.api import plan_from_inventory
from gpufleet.diff import diff_plans, format_diff

SANDBOX = str(Path(__file__).resolve().parents[1] / "inventory" / "sandbox")


@pytest.fixture(scope="module")
def plans():
    return {s: plan_from_inventory(SANDBOX, s) for s in ("sandbox", "sandbox-swapped")}


def with_cpus(plan: dict, cpus: int) -> dict:
    plan = copy.deepcopy(plan)
    for node in plan["nodes"]:
        node["num_cpus"] = cpus
    return plan


def routed(step: dict) -> dict:
    router = next(a for a in step["config"]["applications"] if a["name"] == sc.APP_NAME)
    return {model: [sc.service_of_app(m["app"]) + "@" + m["app"].rsplit(".", 1)[1][:4] for m in members]
            for model, members in router["deployments"][0]["user_config"]["models"].items()}


def test_swap_with_room_for_both_is_make_before_break(plans):
    """4 CPUs per worker: the new chat (worker-2) starts beside the old embed (2 + 2 CPUs, both
    services' MiB within the device), traffic for smollm2 moves once it is healthy, the old chat
    stops; then the same for embed on worker-1. One service at a time."""
    before, after = with_cpus(plans["sandbox"], 4), with_cpus(plans["sandbox-swapped"], 4)
    data = transition.plan_transition(before, after)
    assert data["hitless"] and data["losses"] == []
    assert [s["kind"] for s in data["steps"]] == ["start", "route", "stop"] * 2
    old, new = set(data["from_apps"]), set(data["to_apps"])
    assert not old & new and {sc.service_of_app(n) for n in old} == {sc.service_of_app(n) for n in new} == {
        "chat", "embed"}
    services = [{sc.service_of_app(n) for n in s["apps"]} if s["kind"] != "route" else set(s["apps"])
                for s in data["steps"]]
    assert services == [{"chat"}, {"smollm2"}, {"chat"}, {"embed"}, {"minilm"}, {"embed"}]
    start, route, stop = data["steps"][:3]
    new_chat = start["apps"][0]
    old_chat = stop["apps"][0]
    assert set(start["expected_apps"]) == {sc.APP_NAME, new_chat} | old
    assert routed(start)["smollm2"] == [f"chat@{old_chat.rsplit('.', 1)[1][:4]}"]  # still the old one
    assert routed(route)["smollm2"] == [f"chat@{new_chat.rsplit('.', 1)[1][:4]}"]  # once it is healthy
    assert set(route["expected_apps"]) == set(start["expected_apps"])
    assert old_chat not in stop["expected_apps"] and new_chat in stop["expected_apps"]
    # the last step is exactly the new plan's config
    assert data["steps"][-1]["config"] == sc.build_serve_config(after)
    assert set(data["steps"][-1]["expected_apps"]) == {sc.APP_NAME} | new


def test_swap_without_room_says_which_model_goes_down(plans):
    """2 CPUs per worker: neither new replica fits beside an old one, so one old application stops
    first and its model is unavailable until its replacement is healthy."""
    data = transition.plan_transition(with_cpus(plans["sandbox"], 2), with_cpus(plans["sandbox-swapped"], 2))
    assert not data["hitless"]
    assert [(loss["model"], loss["effect"]) for loss in data["losses"]] == [("minilm", "unavailable")]
    kinds = [s["kind"] for s in data["steps"]]
    assert kinds == ["route", "stop", "start", "route", "stop", "start"]
    # smollm2 itself moves make-before-break once the old embed has made room on worker-2
    chat_start = data["steps"][2]
    assert {sc.service_of_app(n) for n in chat_start["apps"]} == {"chat"}
    assert data["steps"][-1]["config"] == sc.build_serve_config(with_cpus(plans["sandbox-swapped"], 2))
    text = transition.format_transition(data)
    assert "NOT hitless" in text and "minilm: unavailable" in text


def test_memory_decides_too(plans):
    """Enough CPUs but devices that hold one service only: not hitless."""
    before, after = with_cpus(plans["sandbox"], 8), with_cpus(plans["sandbox-swapped"], 8)
    largest = max(d["planned_mib"] for plan in (before, after) for d in plan["gpus"])  # the chat
    for plan in (before, after):
        for device in plan["gpus"]:
            device["memory_mib"] = largest + 1000  # either service alone, never both
    data = transition.plan_transition(before, after)
    assert not data["hitless"]
    for device in (d for plan in (before, after) for d in plan["gpus"]):
        device["memory_mib"] = 2 * largest
    assert transition.plan_transition(before, after)["hitless"]


def test_nothing_applied_and_nothing_changed(plans):
    first = transition.plan_transition(None, plans["sandbox"])
    assert first["hitless"] and first["steps"][-1]["config"] == sc.build_serve_config(plans["sandbox"])
    same = transition.plan_transition(plans["sandbox"], plans["sandbox"])
    assert same["hitless"] and len(same["steps"]) == 1 and same["steps"][0]["kind"] == "final"


def test_running_applications_only_hold_resources(plans):
    """An old application Serve does not run holds nothing: the new ones start at once."""
    data = transition.plan_transition(with_cpus(plans["sandbox"], 2), with_cpus(plans["sandbox-swapped"], 2),
                                      running=[sc.APP_NAME])
    assert data["hitless"] and data["from_apps"] == []
    assert [s["kind"] for s in data["steps"]] == ["start", "route"] * 2


def test_a_model_only_in_the_old_plan_is_removed_last(plans):
    before = with_cpus(plans["sandbox"], 4)
    after = copy.deepcopy(before)
    after["services"] = [s for s in after["services"] if s["name"] == "chat"]
    for device in after["gpus"]:
        device["allocations"] = [a for a in device["allocations"] if a["service"] == "chat"]
    data = transition.plan_transition(before, after)
    assert data["hitless"]
    assert [s["kind"] for s in data["steps"]] == ["route", "stop"] or [s["kind"] for s in data["steps"]] == ["stop"]
    assert "minilm" not in routed(data["steps"][-1])


def test_diff_shows_the_transition(plans):
    """The sandbox inventory (4 CPUs per worker): hitless; with 2 CPUs per worker, minilm goes down."""
    change = diff_plans(plans["sandbox"], plans["sandbox-swapped"])
    assert change["transition"]["hitless"] is True
    assert [s["kind"] for s in change["transition"]["steps"]] == ["start", "route", "stop"] * 2
    assert "transition: hitless" in format_diff(change)
    change = diff_plans(with_cpus(plans["sandbox"], 2), with_cpus(plans["sandbox-swapped"], 2))
    assert change["transition"]["hitless"] is False
    assert change["transition"]["losses"][0]["model"] == "minilm"
    text = format_diff(change)
    assert "transition: NOT hitless" in text and "minilm: unavailable" in text
    assert diff_plans(plans["sandbox"], plans["sandbox"])["transition"] is None


SHARED = """
name: sandbox-shared
description: chat and embeddings on one worker
services:
  - name: chat
    model: HuggingFaceTB/SmolLM2-135M-Instruct
    model_source: /var/lib/gpufleet/models/smollm2-135m-instruct
    engine: vllm
    engine_args: {dtype: bfloat16, max_model_len: 512, gpu_memory_utilization: 0.3, enforce_eager: true}
    replicas: 1
    placement: {label_selector: {gpufleet.io/host: sandbox-worker-1}}
    route: {model_name: smollm2}
  - name: embed
    model: sentence-transformers/all-MiniLM-L6-v2
    model_source: /var/lib/gpufleet/models/all-minilm-l6-v2
    engine: vllm
    engine_args: {dtype: float32, max_model_len: 256, gpu_memory_utilization: 0.2, enforce_eager: true}
    replicas: 1
    placement: {label_selector: {gpufleet.io/host: sandbox-worker-1}}
    route: {model_name: minilm}
"""


def test_engines_sharing_a_device_start_one_after_another(tmp_path):
    (tmp_path / "sandbox-shared.yml").write_text(SHARED)
    plan = with_cpus(plan_from_inventory(SANDBOX, "sandbox-shared", str(tmp_path)), 4)
    data = transition.plan_transition(None, plan)
    starts = [s for s in data["steps"] if s["kind"] == "start"]
    assert [[sc.service_of_app(n) for n in s["apps"]] for s in starts] == [["chat"], ["embed"]]
    assert data["hitless"] and data["steps"][-1]["config"] == sc.build_serve_config(plan)
    # the first start step holds chat only; embed joins in the next
    assert len(starts[0]["expected_apps"]) == 2 and len(starts[1]["expected_apps"]) == 3


def test_every_step_keeps_the_cap_on_loaded_models(plans):
    """Switching to a strategy with on-demand services under max_loaded_models: every step's router
    table holds the cap over the on-demand models it routes (the router would drop the cap for the
    steps' duration otherwise), and the last step is exactly the new plan's config."""
    after = with_cpus(plan_from_inventory(SANDBOX, "sandbox-routed"), 6)
    data = transition.plan_transition(with_cpus(plans["sandbox"], 6), after)
    tables = [next(a for a in s["config"]["applications"] if a["name"] == sc.APP_NAME)["deployments"][0]["user_config"]
              for s in data["steps"] if s["config"]["applications"]]
    on_demand = {"smollm2-coder", "smollm2-technical", "smollm2-multilingual", "smollm2-multimodal"}
    routing_lazy = [t for t in tables if on_demand & set(t["models"])]
    assert routing_lazy, data["steps"]
    for table in routing_lazy:
        lazy = on_demand & set(table["models"])
        assert set(table["on_demand"]["models"]) == lazy and table["on_demand"]["max_loaded"] == 2, table
    assert data["steps"][-1]["config"] == sc.build_serve_config(after)
