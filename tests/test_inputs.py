"""Bad input and planner findings through `gpufleet plan`: the code, the exit status and the field.

Exit 2: the input cannot be planned (unknown strategy, malformed YAML, schema violation,
bad inventory or catalog); the error goes to stderr as `[code] file: field: message`.
Exit 3: the planner found errors; they are in the JSON plan with code, service, GPU and field.
Strategies and inventories are written into tmp_path; inventories use 127.0.0.x only.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from gpufleet.cli import main

A10 = {"count": 4, "model": "A10", "memory_mib": 23028}
MIB = 2**20


# ---- writing inputs ---------------------------------------------------------------------
def write_inventory(root: Path, workers: int = 1, gpus: dict | None = A10, host_vars: dict | None = None,
                    heads: tuple = ("node-0",)) -> str:
    """hosts.yml + group_vars/all.yml (+ host_vars/) in a folder of its own."""
    folder = root / "inventory"
    (folder / "group_vars").mkdir(parents=True, exist_ok=True)
    head_hosts = {h: {"ansible_host": f"127.0.0.{i + 1}"} for i, h in enumerate(heads)}
    worker_hosts = {f"node-{i}": {"ansible_host": f"127.0.0.{i + 1}"} for i in range(1, workers + 1)}
    hosts = {"all": {"children": {"ray_head": {"hosts": head_hosts},
                                  "ray_workers": {"hosts": worker_hosts or {}}}}}
    (folder / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (folder / "group_vars" / "all.yml").write_text(yaml.safe_dump({"gpufleet_gpus": gpus} if gpus else {}))
    for host, variables in (host_vars or {}).items():
        (folder / "host_vars").mkdir(exist_ok=True)
        (folder / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(variables))
    return str(folder)


def write_strategy(root: Path, services: list, name: str = "t", file: str | None = None, raw: str | None = None) -> str:
    folder = root / "strategies"
    folder.mkdir(exist_ok=True)
    text = raw if raw is not None else yaml.safe_dump({"name": name, "description": "test", "services": services},
                                                      sort_keys=False)
    (folder / f"{file or name}.yml").write_text(text)
    return str(folder)


def vllm(name="m", model="Qwen/Qwen3-0.6B", **fields) -> dict:
    service = {"name": name, "model": model, "engine": "vllm",
               "engine_args": {"gpu_memory_utilization": 0.9, "max_model_len": 4096, "enforce_eager": True}}
    args = fields.pop("engine_args", {})
    service["engine_args"].update(args)
    service.update(fields)
    return service


def ollama(name="o", host="node-0", gpus=(3,), model="medgemma-4b-it:q8") -> dict:
    return {"name": name, "model": model, "engine": "ollama", "placement": {"host": host, "gpus": list(gpus)}}


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def plan_json(capsys, inventory: str, strategies: str, name: str = "t") -> tuple[int, dict]:
    rc, out, err = run(capsys, "plan", "-i", inventory, "-s", name, "--strategies-dir", strategies, "--format", "json")
    assert out, err
    return rc, json.loads(out)


def only_error(data: dict, code: str) -> dict:
    found = [e for e in data["errors"] if e["code"] == code]
    assert len(found) == 1, data["errors"]
    return found[0]


@pytest.fixture
def inventory(tmp_path):
    """node-0 (head) and node-1, 4 x A10 each."""
    return write_inventory(tmp_path)


# ---- exit 2: the input itself is bad ------------------------------------------------------------
def test_unknown_strategy_exits_2(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm()], name="present")
    rc, out, err = run(capsys, "plan", "-i", inventory, "-s", "absent", "--strategies-dir", strategies)
    assert rc == 2 and out == ""
    assert "[unknown_strategy]" in err
    assert ": strategy: no strategy named 'absent'" in err
    assert "present" in err                     # the fix lists what exists


def test_malformed_yaml_exits_2(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [], raw="name: t\nservices: [\n  - {name: m\n")
    rc, out, err = run(capsys, "plan", "-i", inventory, "-s", "t", "--strategies-dir", strategies)
    assert rc == 2 and out == ""
    assert "[malformed_yaml]" in err and "t.yml" in err
    assert "cannot parse" in err


SCHEMA_CASES = {
    "tp not an int": ([vllm(engine_args={"tensor_parallel_size": "four"})],
                      "services[m].engine_args.tensor_parallel_size", "must be int"),
    "tp below 1": ([vllm(engine_args={"tensor_parallel_size": 0})],
                   "services[m].engine_args.tensor_parallel_size", "must be >= 1"),
    "utilization above 1": ([vllm(engine_args={"gpu_memory_utilization": 1.5})],
                            "services[m].engine_args.gpu_memory_utilization", "must be in (0, 1]"),
    "unknown engine arg": ([vllm(engine_args={"gpu_util": 0.5})],
                           "services[m].engine_args.gpu_util", "is not an engine argument"),
    "ollama arg under vllm": ([vllm(engine_args={"context_length": 4096})],
                              "services[m].engine_args.context_length", "is not an engine argument"),
    "unknown engine": ([vllm(engine="tgi")], "services[m].engine", "must be vllm or ollama"),
    "missing model": ([{"name": "m", "engine": "vllm"}], "services[m].model", "must be a catalog key"),
    "bad service name": ([vllm(name="Big_Model")], "services[0].name", "lowercase DNS-style"),
    "unknown service key": ([vllm(image="x")], "services[0].image", "is not a service key"),
    "replicas bounds": ([vllm(replicas={"min": 3, "max": 2})], "services[m].replicas", "min <= initial <= max"),
    "replicas zero": ([vllm(replicas=0)], "services[m].replicas", "must be >= 1"),
    "replicas max missing": ([vllm(replicas={"min": 1})], "services[m].replicas.max", "is required"),
    "gpus pinned under vllm": ([vllm(placement={"host": "node-0", "gpus": [0]})],
                               "services[m].placement.gpus", "only Ollama services"),
    "placement unknown key": ([vllm(placement={"node": "node-0"})], "services[m].placement", "must be a mapping"),
    "ollama without gpus": ([{"name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama",
                              "placement": {"host": "node-0"}}], "services[o].placement", "needs host and gpus"),
    "ollama with replicas": ([{**ollama(), "replicas": 2}], "services[o].replicas", "replicas must be 1"),
    "ollama repeated gpu": ([ollama(gpus=(1, 1))], "services[o].placement.gpus", "repeats an index"),
    "route not a mapping": ([vllm(route="chat")], "services[m].route", "must be a mapping of model_name"),
    "duplicate names": ([vllm(), vllm()], "services[m].name", "is used twice"),
    "no services": ([], "services", "must be a non-empty list"),
    "unknown dtype": ([vllm(engine_args={"dtype": "int3"})], "services[m].engine_args.dtype",
                      "'int3' is not a value vLLM 0.32 accepts"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_violation_exits_2_naming_the_field(capsys, tmp_path, inventory, case):
    services, field, words = SCHEMA_CASES[case]
    strategies = write_strategy(tmp_path, services)
    rc, out, err = run(capsys, "plan", "-i", inventory, "-s", "t", "--strategies-dir", strategies)
    assert rc == 2 and out == ""
    assert "[invalid_field]" in err
    assert f"t.yml: {field}: " in err
    assert words in err


def test_strategy_name_must_match_its_file(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm()], name="other", file="t")
    rc, _, err = run(capsys, "plan", "-i", inventory, "-s", "t", "--strategies-dir", strategies)
    assert rc == 2
    assert "[invalid_field]" in err and ": name: is 'other' but the file is t.yml" in err


def test_strategies_command_marks_an_invalid_file_and_exits_2(capsys, tmp_path, inventory):
    write_strategy(tmp_path, [vllm()], name="good")
    strategies = write_strategy(tmp_path, [vllm(engine="tgi")], name="bad")
    rc, out, _ = run(capsys, "strategies", "-i", inventory, "--strategies-dir", strategies)
    assert rc == 2
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"good", "bad"}
    assert "fits" in lines["good"]
    assert "invalid" in lines["bad"] and "services[m].engine" in lines["bad"]


INVENTORY_CASES = {
    "gpus undeclared": (dict(gpus=None), "node-0.gpufleet_gpus", "is missing or not a mapping"),
    "gpu count negative": (dict(gpus={"count": -1}), "node-0.gpufleet_gpus.count", "must be an integer >= 0"),
    "gpu memory missing": (dict(gpus={"count": 4, "model": "A10"}), "node-0.gpufleet_gpus.memory_mib",
                           "must be an integer >= 1"),
    "gpu unknown key": (dict(gpus={**A10, "vram": 24}), "node-0.gpufleet_gpus.vram", "is not a known key"),
    "two heads": (dict(heads=("node-0", "node-9")), "groups.ray_head", "must hold exactly one host, holds 2"),
    "bad label key": (dict(host_vars={"node-1": {"gpufleet_node_labels": {"bad key": "x"}}}),
                      "node-1.gpufleet_node_labels.bad key", "is not a valid label key"),
    "reserved label key": (dict(host_vars={"node-1": {"gpufleet_node_labels": {"ray.io/node-id": "x"}}}),
                           "node-1.gpufleet_node_labels.ray.io/node-id", "ray.io/ is reserved"),
    "identity label overridden": (dict(host_vars={"node-1": {"gpufleet_node_labels": {"gpufleet.io/host": "x"}}}),
                                  "node-1.gpufleet_node_labels.gpufleet.io/host", "would override an identity label"),
    "bad label value": (dict(host_vars={"node-1": {"gpufleet_node_labels": {"gpufleet.io/pool": "a b"}}}),
                        "node-1.gpufleet_node_labels.gpufleet.io/pool", "is not a valid label value"),
}


@pytest.mark.parametrize("case", sorted(INVENTORY_CASES))
def test_bad_inventory_exits_2_naming_the_field(capsys, tmp_path, case):
    kwargs, field, words = INVENTORY_CASES[case]
    inventory = write_inventory(tmp_path, **kwargs)
    strategies = write_strategy(tmp_path, [vllm()])
    rc, out, err = run(capsys, "plan", "-i", inventory, "-s", "t", "--strategies-dir", strategies)
    assert rc == 2 and out == ""
    assert f"[invalid_field] {inventory}: {field}: " in err
    assert words in err


def test_missing_inventory_exits_2(capsys, tmp_path):
    strategies = write_strategy(tmp_path, [vllm()])
    missing = str(tmp_path / "no-such-inventory")
    rc, out, err = run(capsys, "plan", "-i", missing, "-s", "t", "--strategies-dir", strategies)
    assert rc == 2 and out == ""
    assert f"[missing_file] {missing}: -i: no such inventory" in err


def test_inventory_inheritance_host_vars_override_group_vars(capsys, tmp_path):
    """Ansible's own semantics: node-1's host_vars replace group_vars/all for node-1 only."""
    inventory = write_inventory(tmp_path, host_vars={"node-1": {"gpufleet_gpus": {"count": 2, "model": "L4",
                                                                                 "memory_mib": 22528}}})
    strategies = write_strategy(tmp_path, [vllm()])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 0
    nodes = {n["host"]: n for n in data["nodes"]}
    assert nodes["node-0"]["num_gpus"] == 4 and nodes["node-0"]["labels"]["gpufleet.io/gpu-model"] == "A10"
    assert nodes["node-1"]["num_gpus"] == 2 and nodes["node-1"]["labels"]["gpufleet.io/gpu-model"] == "L4"
    assert nodes["node-1"]["address"] == "127.0.0.2"
    assert nodes["node-1"]["labels"]["gpufleet.io/group"] == "worker"


CATALOG_CASES = {
    "missing field": ({"models": {"acme/x": {"format": "hf", "weights_bytes": {"bfloat16": 1}}}},
                      "invalid_field", "models.acme/x.layers"),
    "bad format": ({"models": {"acme/x": {"format": "onnx"}}}, "invalid_field", "models.acme/x.format"),
    "unknown base": ({"models": {"acme/x:q4": {"format": "gguf", "ollama_tag": "x:q4", "size_bytes": 10,
                                               "base": "acme/x"}}}, "invalid_field", "models.acme/x:q4.base"),
}


@pytest.mark.parametrize("case", sorted(CATALOG_CASES))
def test_bad_catalog_file_exits_2(capsys, tmp_path, inventory, case):
    content, code, field = CATALOG_CASES[case]
    catalog = tmp_path / "catalog.yml"
    catalog.write_text(yaml.safe_dump(content))
    strategies = write_strategy(tmp_path, [vllm()])
    rc, out, err = run(capsys, "plan", "-i", inventory, "-s", "t", "--strategies-dir", strategies,
                       "--catalog", str(catalog))
    assert rc == 2 and out == ""
    assert f"[{code}]" in err and f": {field}: " in err


# ---- exit 3: the planner's findings -------------------------------------------------------------
def test_tp_not_divisor_of_attention_heads(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-4b-it",
                                                engine_args={"tensor_parallel_size": 3})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "tp_not_divisor")
    assert e["service"] == "m"
    assert e["field"] == "services[m].engine_args.tensor_parallel_size"
    assert "tensor_parallel_size 3 does not divide the 8 attention heads (8 % 3 = 2)" in e["message"]
    assert e["fix"].endswith("1, 2, 4, 8")
    assert data["services"][0]["max_replicas"] == 0


def test_tp_not_divisor_of_kv_heads(capsys, tmp_path, inventory):
    # Qwen3-14B: 40 attention heads (40 % 5 == 0) but 8 KV heads: 5 neither divides nor is a multiple
    strategies = write_strategy(tmp_path, [vllm(model="Qwen/Qwen3-14B", engine_args={"tensor_parallel_size": 5})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "tp_not_divisor")
    assert "8 KV heads" in e["message"] and "tensor_parallel_size 5" in e["message"]
    assert e["field"].endswith("engine_args.tensor_parallel_size")


def test_weights_do_not_fit(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-27b-it",
                                                engine_args={"gpu_memory_utilization": 0.95})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "weights_do_not_fit")
    assert (e["service"], e["gpu"]) == ("m", "node-0:0")
    assert e["field"] == "services[m].engine_args.gpu_memory_utilization"
    assert f"weights need {54.9e9 / MIB:.0f} MiB per device" in e["message"]        # 52357, TP 1
    # the budget: ceil(0.95 x (23028 - 513 reserved) MiB) = 21389.25 (catalog gpus.A10.reserved_mib)
    assert f"0.95 x 22515 MiB gives {math.ceil(0.95 * 22515 * MIB) / MIB:.0f} MiB" in e["message"]   # 21389
    assert e["fix"] == "use tensor_parallel_size 4"     # 52357 / 2 = 26178 > 21389; / 4 = 13089 fits


def test_kv_cache_too_small_for_one_sequence(capsys, tmp_path, inventory):
    # Qwen3-0.6B at 0.12 of an A10's 22515 usable MiB, eager: 2702 - 1144 - 411 - 256 = 890 MiB of KV;
    # one 40960-token sequence: 28 layers x ceil(40960 / 16) pages x 16 x (2 x 8 x 128 x 2) B = 4480 MiB
    strategies = write_strategy(tmp_path, [vllm(engine_args={"gpu_memory_utilization": 0.12,
                                                             "max_model_len": 40960})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "kv_cache_too_small")
    assert e["service"] == "m" and e["gpu"] == "node-0:0"
    assert e["field"] == "services[m].engine_args.max_model_len"
    # 28 layers x 2560 blocks, plus the null block (one block of 28 pages) vLLM's pool holds back
    need = (28 * (40960 // 16) + 28) * 16 * (2 * 8 * 128 * 2) / MIB
    assert round(need) == 4482
    assert "one 40960-token sequence needs 4482 MiB of KV cache per device" in e["message"]
    # activations on a GPU: the 2048-token batch + 256 x vocab logits (bf16) and 2 float32 sampler tensors
    kv = (math.ceil(0.12 * 22515 * MIB) / MIB - 1.2e9 / MIB
          - (2048 * (4 * 1024 + 2 * 3072) * 2 + 256 * 151936 * (2 + 2 * 4)) / MIB - 256)
    assert f"leaves {kv:.0f} MiB" in e["message"]
    # the longest fitting length: whole blocks of 28 pages x 65536 B, less the null block
    longest = (int(kv * MIB) // (28 * 16 * 2 * 8 * 128 * 2) - 1) * 16
    assert e["fix"] == f"lower max_model_len to {longest} or raise gpu_memory_utilization"


def test_utilization_overcommit_names_the_shares(capsys, tmp_path, inventory):
    # four 0.6 replicas fill node-0's GPUs; a fifth service pinned to node-0 must share one
    strategies = write_strategy(tmp_path, [
        vllm(name="a", engine_args={"gpu_memory_utilization": 0.6}, replicas=4,
             placement={"label_selector": {"gpufleet.io/host": "node-0"}}),
        vllm(name="b", engine_args={"gpu_memory_utilization": 0.6}, placement={"host": "node-0"},
             route={"model_name": "a"}),
    ])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "utilization_overcommit")
    assert e["gpu"] == "node-0:0"
    assert e["service"] == "a, b"
    assert e["field"] == "engine_args.gpu_memory_utilization"
    assert "sums to 1.20" in e["message"]
    need = 2 * (math.ceil(0.6 * 22515 * MIB) / MIB + 512)     # shares of the usable 23028 - 513 MiB
    assert f"need {need:.0f} MiB on a 22515 MiB device" in e["message"]   # 28042


def test_replicas_exceed_capacity(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-27b-it", replicas=3,
                                                engine_args={"tensor_parallel_size": 4,
                                                             "gpu_memory_utilization": 0.95})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "replicas_exceed_capacity")
    assert e["field"] == "services[m].replicas"
    assert "needs 3 replica(s) of 4 device(s)" in e["message"] and "hold at most 2" in e["message"]
    assert e["fix"].startswith("lower replicas to 2")


def test_replicas_exceed_capacity_tp_larger_than_any_node(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-27b-it",
                                                engine_args={"tensor_parallel_size": 8})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "replicas_exceed_capacity")
    assert e["field"] == "services[m].engine_args.tensor_parallel_size"
    assert "needs 8 GPU(s) on one node" in e["message"] and "at most 4" in e["message"]


def test_autoscaling_min_above_capacity_is_an_error_max_above_is_clamped(capsys, tmp_path, inventory):
    big = {"tensor_parallel_size": 4, "gpu_memory_utilization": 0.95}
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-27b-it", engine_args=big,
                                                replicas={"min": 1, "max": 5})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 0
    assert [w["code"] for w in data["warnings"]] == ["max_replicas_clamped"]
    assert data["services"][0]["max_replicas"] == 2
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-27b-it", engine_args=big,
                                                replicas={"min": 3, "max": 5})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    assert only_error(data, "replicas_exceed_capacity")["field"] == "services[m].replicas"


@pytest.mark.parametrize("value, words", [
    ("in(node-0, node-1)", "has a space inside in(...)"),
    ("!in(node-0,\tnode-1)", "has a space inside in(...)"),
    ("exists()", "exists()/!exists() are not supported"),
    ("in()", "is not a valid label value"),
    ("node 0", "is not a valid label value"),
])
def test_selector_syntax(capsys, tmp_path, inventory, value, words):
    strategies = write_strategy(tmp_path, [vllm(placement={"label_selector": {"gpufleet.io/host": value}})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "selector_syntax")
    assert e["service"] == "m"
    assert e["field"] == "services[m].placement.label_selector"
    assert words in e["message"] and "gpufleet.io/host" in e["message"]


def test_selector_syntax_space_suggests_the_fixed_selector(capsys, tmp_path, inventory):
    spaced = {"label_selector": {"gpufleet.io/host": "in(node-0, node-1)"}}
    strategies = write_strategy(tmp_path, [vllm(placement=spaced)])
    _, data = plan_json(capsys, inventory, strategies)
    assert "write in(node-0,node-1)" in only_error(data, "selector_syntax")["message"]


def test_selector_syntax_bad_key(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(placement={"label_selector": {"Bad Key": "x"}})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "selector_syntax")
    assert "'Bad Key'" in e["message"] and e["field"] == "services[m].placement.label_selector"


def test_selector_matches_nothing(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(placement={"label_selector": {"gpufleet.io/pool": "h100"}})])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "selector_matches_nothing")
    assert e["field"] == "services[m].placement.label_selector"
    assert "gpufleet.io/pool" in e["message"] and "h100" in e["message"]
    assert data["services"][0]["placements"] == []


def test_selector_matches_nothing_for_an_ollama_host(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [ollama(host="node-9")])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "selector_matches_nothing")
    assert e["field"] == "services[o].placement.host"
    assert "'node-9' is not in the inventory" in e["message"]
    assert "node-0, node-1" in e["fix"]


def test_gpu_index_out_of_range(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [ollama(gpus=(2, 4))])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "gpu_index_out_of_range")
    assert e["gpu"] == "node-0:4"
    assert e["field"] == "services[o].placement.gpus"
    assert "GPU index 4 does not exist on node-0, which has 4 GPU(s) (indices 0-3)" in e["message"]


def test_unknown_model(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-99b-it")])
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 3
    e = only_error(data, "unknown_model")
    assert e["field"] == "services[m].model"
    assert "'google/medgemma-99b-it' is not in the catalog" in e["message"]
    assert "--catalog" in e["fix"]


def test_extra_catalog_makes_a_model_known(capsys, tmp_path, inventory):
    catalog = tmp_path / "mine.yml"
    catalog.write_text(yaml.safe_dump({"models": {"acme/tiny": {
        "format": "hf", "weights_bytes": {"bfloat16": 100 * MIB}, "layers": 4, "attention_heads": 4,
        "kv_heads": 4, "head_dim": 64, "hidden_size": 256, "intermediate_size": 1024, "vocab_size": 1000,
        "max_context": 2048}}}))
    strategies = write_strategy(tmp_path, [vllm(model="acme/tiny", engine_args={"max_model_len": 2048})])
    rc, out, _ = run(capsys, "plan", "-i", inventory, "-s", "t", "--strategies-dir", strategies,
                     "--catalog", str(catalog), "--format", "json")
    assert rc == 0
    alloc = json.loads(out)["gpus"][0]["allocations"][0]
    assert alloc["parts"]["weights"] == 100


PLANNER_INVALID = {
    "gguf build under vllm": ([vllm(model="medgemma-4b-it:q8")], "services[m].model", "engine vllm cannot load it"),
    "hf model under ollama": ([ollama(model="google/medgemma-4b-it")], "services[o].model",
                              "engine ollama cannot load it"),
    "max_model_len beyond context": ([vllm(engine_args={"max_model_len": 50000})],
                                     "services[m].engine_args.max_model_len", "exceeds the model's context of 40960"),
    "host contradicts selector": ([vllm(placement={"host": "node-0",
                                                   "label_selector": {"gpufleet.io/host": "node-1"}})],
                                  "services[m].placement.host", "contradicts label_selector"),
    "route shared by different models": ([vllm(name="a", route={"model_name": "chat"}),
                                          vllm(name="b", model="Qwen/Qwen3-14B", route={"model_name": "chat"},
                                               engine_args={"tensor_parallel_size": 2})],
                                         "services[*].route.model_name", "'chat' is shared by different models"),
}


@pytest.mark.parametrize("case", sorted(PLANNER_INVALID))
def test_planner_invalid_field(capsys, tmp_path, inventory, case):
    """invalid_field found by the planner (it needs the catalog) exits 2 too: one code, one exit status."""
    services, field, words = PLANNER_INVALID[case]
    strategies = write_strategy(tmp_path, services)
    rc, data = plan_json(capsys, inventory, strategies)
    assert rc == 2
    e = only_error(data, "invalid_field")
    assert e["field"] == field
    assert words in e["message"]


def test_gguf_under_vllm_suggests_the_hf_build(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(model="medgemma-4b-it:q8")])
    _, data = plan_json(capsys, inventory, strategies)
    assert only_error(data, "invalid_field")["fix"] == "use 'google/medgemma-4b-it' with this engine"


def test_table_format_shows_the_verdict_and_exit_status(capsys, tmp_path, inventory):
    strategies = write_strategy(tmp_path, [vllm(model="google/medgemma-99b-it")])
    rc, out, _ = run(capsys, "plan", "-i", inventory, "-s", "t", "--strategies-dir", strategies)
    assert rc == 3
    assert "DOES NOT FIT (1 error(s))" in out
    assert "[unknown_model] m, services[m].model:" in out
