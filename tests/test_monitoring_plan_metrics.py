"""The plan as Prometheus metrics (src/gpufleet/plan_metrics.py): every figure is the plan's own,
the file passes `promtool check metrics`, and the labels join the observed metrics."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.api import plan_from_inventory
from gpufleet.plan_metrics import textfile

REPO = Path(__file__).resolve().parents[1]
CASES = [("production", "baseline"), ("production", "ollama-sidecar-spread"), ("production", "cxr-worker"),
         ("sandbox", "sandbox")]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: sandbox/install-host.sh installs Debian's prometheus package (make sandbox-host)"
    return path


def parse(text: str) -> dict:
    """{(metric, frozenset(labels)): value} as Prometheus' own client library reads the file."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module", params=CASES, ids=[f"{i}-{s}" for i, s in CASES])
def plan(request):
    site, strategy = request.param
    return plan_from_inventory(str(REPO / "inventory" / site), strategy)


def test_promtool_accepts_the_file(plan):
    run = subprocess.run([promtool(), "check", "metrics"], input=textfile(plan), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_device_figure_is_the_plans(plan):
    got = parse(textfile(plan))
    ip = {n["host"]: n["address"] for n in plan["nodes"]}
    expected = {}
    for dev in plan["gpus"]:
        where = {"host": dev["host"], "ip": ip[dev["host"]], "device": str(dev["index"]), "device_type": dev["kind"]}
        expected[("gpufleet_plan_device_memory_mib", frozenset(where.items()))] = dev["memory_mib"]
        expected[("gpufleet_plan_device_planned_mib", frozenset(where.items()))] = dev["planned_mib"]
        for a in dev["allocations"]:
            for kind, mib in a["parts"].items():
                labels = {**where, "service": a["service"], "replica": str(a["replica"]), "kind": kind}
                expected[("gpufleet_plan_memory_mib", frozenset(labels.items()))] = mib
    device_metrics = {k: v for k, v in got.items() if k[0].startswith("gpufleet_plan_device") or
                      k[0] == "gpufleet_plan_memory_mib"}
    assert device_metrics == expected
    assert len(plan["gpus"]) == sum(1 for k in got if k[0] == "gpufleet_plan_device_planned_mib")


def test_replica_bounds_and_kv_tokens_are_the_plans(plan):
    got = parse(textfile(plan))
    for svc in plan["services"]:
        bounds = {k[0]: v for k, v in got.items()
                  if k[0].startswith("gpufleet_plan_replicas_") and ("service", svc["name"]) in k[1]}
        assert bounds == {f"gpufleet_plan_replicas_{b}": svc["replicas"][b] for b in ("min", "max", "initial")}
        kv = sorted((dict(k[1])["replica"], dict(k[1])["host"], v) for k, v in got.items()
                    if k[0] == "gpufleet_plan_kv_cache_tokens" and ("service", svc["name"]) in k[1])
        if svc["kv_cache_tokens"] is None:
            assert kv == []
        else:
            assert kv == sorted((str(p["replica"]), p["host"], svc["kv_cache_tokens"]) for p in svc["placements"])
            assert kv, svc["name"]


def test_labels_join_the_serve_and_vllm_metrics():
    plan = plan_from_inventory(str(REPO / "inventory/sandbox"), "sandbox")
    got = parse(textfile(plan))
    chat = [dict(k[1]) for k in got if k[0] == "gpufleet_plan_replicas_max" and ("service", "chat") in k[1]]
    # ray.serve.llm's deployment name (serve_config.py) and the OpenAI model name
    assert chat == [{"service": "chat", "model_name": "smollm2", "engine": "vllm", "deployment": "LLMServer:chat"}]
    nodes = {dict(k[1])["host"]: dict(k[1])["ip"] for k in got if k[0] == "gpufleet_plan_node_info"}
    assert nodes == {"sandbox-head": "10.89.0.10", "sandbox-worker-1": "10.89.0.11", "sandbox-worker-2": "10.89.0.12"}


def test_label_values_are_escaped():
    plan = {"strategy": 'a"b\\c\nd', "nodes": [], "gpus": [], "services": []}
    text = textfile(plan)
    assert 'strategy="a\\"b\\\\c\\nd"' in text
    assert parse(text) == {("gpufleet_plan_info", frozenset({("strategy", 'a"b\\c\nd')})): 1.0}


def test_the_file_does_not_depend_on_the_plans_key_order(plan):
    """The play writes the file from a plan it made (keys in insertion order) or from a plan file
    (keys sorted by json.dump): both must give the same bytes, or every other apply changes it."""
    assert textfile(json.loads(json.dumps(plan, sort_keys=True))) == textfile(plan)
