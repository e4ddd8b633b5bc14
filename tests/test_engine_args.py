"""The engine arguments the planner reads are one table (gpufleet.engine_args), and that table is
checked against the planner's own source: every `engine_args.get(NAME, DEFAULT)` in planner.py,
and every catalog engine constant it reads that vLLM takes as an engine argument (block_size),
must be in the table with the same default. tests/test_render.py then checks that the rendered
Serve config and Ollama units carry each of them at the planner's value.

Also the Ollama unit facts (gpufleet.ollama_unit): ports and environment.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from gpufleet import engine_args, memory, ollama_unit  # noqa: E402
from gpufleet.engine_args import MODEL_CONTEXT, EngineConstant  # noqa: E402

PLANNER = REPO / "src/gpufleet/planner.py"
# Receivers of `.get(NAME, DEFAULT)` in planner.py that hold a service's engine_args, and those
# that hold the catalog's engine constants.
ENGINE_CONSTANTS = {"self.vllm": "vllm", "self.ollama": "ollama", "consts": "ollama"}


def _rule(node, where: str):
    """A default as planner.py writes it, in gpufleet.engine_args' terms."""
    if node is None:
        return None  # dict.get's default
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    source = ast.unparse(node)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and ast.unparse(node.func.value) in ENGINE_CONSTANTS):
        return EngineConstant(ast.literal_eval(node.args[0]), ast.literal_eval(node.args[1]))
    if source.endswith("model.max_context"):
        return MODEL_CONTEXT
    if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "mem":
        return getattr(memory, node.attr)
    raise AssertionError(f"{where}: default {source} is not one gpufleet.engine_args can state")


def planner_reads(source: str, vllm_fields: set) -> dict:
    """{engine: {name: default rule}} of every engine argument the planner source reads."""
    reads: dict = {"vllm": {}, "ollama": {}}
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef):
            continue
        engine = "ollama" if "ollama" in function.name else "vllm"
        for call in ast.walk(function):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "get"
                    and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
                continue
            receiver, name = ast.unparse(call.func.value), call.args[0].value
            where = f"planner.py:{call.lineno} {receiver}.get({name!r})"
            if receiver == "args" or receiver.endswith("engine_args"):
                rule = _rule(call.args[1] if len(call.args) > 1 else None, where)
            elif ENGINE_CONSTANTS.get(receiver) == "vllm" and name in vllm_fields:
                # a catalog constant that vLLM takes as an engine argument: the planner assumes it
                rule = EngineConstant(name, ast.literal_eval(call.args[1]) if len(call.args) > 1 else None)
            else:
                continue
            seen = reads[engine].setdefault(name, rule)
            assert seen == rule, f"{where}: default {rule!r}, elsewhere {seen!r}"
    return reads


def table_mismatches(source: str, vllm_fields: set) -> list:
    reads = planner_reads(source, vllm_fields)
    problems = []
    for engine, names in reads.items():
        table = engine_args.PLANNED[engine]
        for name, rule in names.items():
            if name not in table:
                problems.append(f"{engine}: planner reads {name} (default {rule!r}); gpufleet.engine_args lacks it")
            elif table[name] != rule:
                problems.append(f"{engine}: planner assumes {name} = {rule!r}; "
                                f"gpufleet.engine_args says {table[name]!r}")
        for name in set(table) - set(names):
            problems.append(f"{engine}: gpufleet.engine_args lists {name}, which the planner does not read")
    return problems


@functools.cache
def vllm_field_names() -> frozenset:
    """AsyncEngineArgs field names of the installed vLLM (in its own interpreter: see the probe)."""
    run = subprocess.run([sys.executable, REPO / "tests/engine_args_probe.py", "--fields"], capture_output=True,
                         text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    lines = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    return frozenset(json.loads(lines[-1][len("PROBE "):]))


@pytest.fixture
def vllm_fields() -> frozenset:
    return vllm_field_names()


def test_the_table_is_what_the_planner_reads(vllm_fields):
    source = PLANNER.read_text()
    assert table_mismatches(source, vllm_fields) == []
    reads = planner_reads(source, vllm_fields)
    assert {"tensor_parallel_size", "max_num_seqs", "block_size"} <= set(reads["vllm"])
    assert {"context_length", "kv_cache_type"} <= set(reads["ollama"])


@pytest.mark.parametrize("edit, complaint", [
    # a new argument the planner starts to read
    ('seqs = args.get("max_num_seqs"',
     'speculative = args.get("num_speculative_tokens", 0)\n            seqs = args.get("max_num_seqs"'),
    # a default that moves in the planner but not in the table
    ('args.get("enforce_eager", False)', 'args.get("enforce_eager", True)'),
    ('args.get("kv_cache_type", "f16")', 'args.get("kv_cache_type", "q8_0")'),
])
def test_the_check_sees_a_planner_change(vllm_fields, edit, complaint):
    source = PLANNER.read_text()
    assert edit in source, f"planner.py changed: update this test's edit {edit!r}"
    assert table_mismatches(source.replace(edit, complaint), vllm_fields) != []


def test_every_planned_vllm_argument_is_a_vllm_engine_argument(vllm_fields):
    assert set(engine_args.VLLM) <= vllm_fields


def test_every_planned_ollama_argument_has_its_environment_variable():
    assert set(engine_args.OLLAMA) <= set(ollama_unit.ENVIRONMENT)


# ---- Ollama unit facts -------------------------------------------------------------------------
def test_each_ollama_service_of_a_host_gets_its_own_port():
    addresses = ollama_unit.listen_addresses([("a", "node-0"), ("b", "node-1"), ("c", "node-0"), ("d", "node-0")])
    assert addresses == {"a": "127.0.0.1:11434", "b": "127.0.0.1:11434", "c": "127.0.0.1:11435",
                         "d": "127.0.0.1:11436"}


def _service(**args):
    return {"name": "s", "engine_args": {"context_length": 4096, "num_parallel": 1, "kv_cache_type": "f16", **args}}


def test_ollama_environment_carries_every_argument():
    env = ollama_unit.environment(_service(context_length=8192, num_parallel=2, keep_alive="10m",
                                           flash_attention=False))
    assert env == {"OLLAMA_CONTEXT_LENGTH": "8192", "OLLAMA_NUM_PARALLEL": "2", "OLLAMA_KV_CACHE_TYPE": "f16",
                   "OLLAMA_KEEP_ALIVE": "10m", "OLLAMA_FLASH_ATTENTION": "0"}


def test_a_quantised_kv_cache_turns_flash_attention_on():
    env = ollama_unit.environment(_service(kv_cache_type="q8_0"))
    assert env["OLLAMA_KV_CACHE_TYPE"] == "q8_0" and env["OLLAMA_FLASH_ATTENTION"] == "1"


def test_a_quantised_kv_cache_without_flash_attention_is_refused():
    with pytest.raises(ollama_unit.OllamaUnitError, match="needs flash attention"):
        ollama_unit.environment(_service(kv_cache_type="q4_0", flash_attention=False))


def test_a_plan_without_the_planned_arguments_is_refused():
    with pytest.raises(ollama_unit.OllamaUnitError, match="lacks engine_args"):
        ollama_unit.environment({"name": "s", "engine_args": {"kv_cache_type": "q8_0"}})
