"""Planned against observed, the parts that need no cluster: the readers of what engines report
(`ollama ps`, vLLM's cache_config_info metric, its startup line), `kv_cache_memory_bytes: planned`
from the strategy to vLLM's own AsyncEngineArgs, and `gpufleet calibrate`'s overlay fed back to the
planner. The running engines are read in tests/test_sandbox_observed.py.

No Ollama server can run on these machines: `ollama ps` is parsed here from the output format
Ollama's source prints (cmd/cmd.go ListRunningHandler: tablewriter, no borders, 4 spaces of padding,
columns NAME ID SIZE PROCESSOR CONTEXT UNTIL; format/bytes.go HumanBytes for SIZE) and was never
read from a running server.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpufleet import calibrate
from gpufleet.api import plan_from_inventory
from gpufleet.cli import main
from gpufleet.serve_config import build_serve_config
from gpufleet.status import parse_cache_config_info, parse_kv_log_lines, parse_ollama_ps

REPO = Path(__file__).resolve().parents[1]
SANDBOX = str(REPO / "inventory" / "sandbox")

# `ollama ps` of Ollama 0.12 with two models, as its users have published it (CONTEXT column,
# rows padded to the widest cell plus 4 spaces, trailing spaces kept).
OLLAMA_PS = [
    "NAME                   ID              SIZE      PROCESSOR    CONTEXT    UNTIL              ",
    "qwen2.5-coder:7b       dae161e27b0e    5.6 GB    100% GPU     4096       4 minutes from now    ",
    "mistral:7b-instruct    3944fe81ec14    5.6 GB    100% GPU     4096       4 minutes from now    ",
]
# before CONTEXT existed (Ollama < 0.12), a split model and one being unloaded
OLLAMA_PS_OLD = [
    "NAME                  ID              SIZE     PROCESSOR          UNTIL          ",
    "medgemma-4b-it:q8     4f6b83f30b62    12 GB    23%/77% CPU/GPU    Stopping...    ",
    "llama3:8b             365c0bd3c000    6 GB     100% CPU           Forever        ",
]


def test_ollama_ps_table():
    rows = parse_ollama_ps(OLLAMA_PS)
    assert [r["name"] for r in rows] == ["qwen2.5-coder:7b", "mistral:7b-instruct"]
    first = rows[0]
    assert first["id"] == "dae161e27b0e" and first["processor"] == "100% GPU" and first["gpu_percent"] == 100
    assert first["context"] == 4096 and first["until"] == "4 minutes from now"
    # "5.6 GB" is %.1f of a decimal GB: 5.55e9 up to 5.65e9 bytes
    assert (first["size_bytes"], first["size_max_bytes"]) == (5_550_000_000, 5_650_000_000)


def test_ollama_ps_table_without_context_and_split_model():
    split, cpu = parse_ollama_ps(OLLAMA_PS_OLD)
    assert split["name"] == "medgemma-4b-it:q8" and split["gpu_percent"] == 77 and split["context"] is None
    assert (split["size_bytes"], split["size_max_bytes"]) == (12 * 10**9, 13 * 10**9)  # %d truncates from 10 GB
    assert split["until"] == "Stopping..."
    assert cpu["gpu_percent"] == 0 and (cpu["size_bytes"], cpu["size_max_bytes"]) == (6 * 10**9, 6 * 10**9)


def test_ollama_ps_nothing_loaded_or_no_table():
    assert parse_ollama_ps(["NAME    ID    SIZE    PROCESSOR    CONTEXT    UNTIL    "]) == []
    assert parse_ollama_ps(["Error: could not connect to ollama server, run 'ollama serve' to start it"]) == []
    assert parse_ollama_ps([]) == []


def test_cache_config_info_lines():
    line = ('ray_vllm_cache_config_info{Component="core_worker",ReplicaId="abc123",block_size="128",'
            'engine="0",gpu_memory_utilization="0.3",kv_cache_memory_bytes="None",'
            'kv_cache_size_tokens="198528",num_gpu_blocks="1551",prefix="a \\"b\\" c"} 1.0')
    restarted = line.replace('"1551"', '"1000"').replace('"198528"', '"128000"')
    seen = parse_cache_config_info(["# HELP ray_vllm_cache_config_info x", line, "ray_other{a=\"b\"} 2", restarted])
    assert seen == [{"replica_id": "abc123", "tokens": 128000, "blocks": 1000, "block_size": 128,
                     "gpu_memory_utilization": 0.3, "kv_cache_memory_bytes": None, "source": "metric"}]


def test_kv_log_lines():
    lines = [{"replica_id": None, "line": "INFO 11-24 [kv_cache_utils.py:2328] GPU KV cache size: 87,622 tokens, "
              "Maximum concurrency for 8,192 tokens per request: 35.94x"},
             {"replica_id": "r1", "line": "(EngineCore pid=77) INFO CPU KV cache size: 198,528 tokens, Maximum"},
             {"replica_id": "r1", "line": "nothing here"}]
    seen = parse_kv_log_lines(lines)
    assert [(o["replica_id"], o["tokens"], o["device"]) for o in seen] == [(None, 87622, "GPU"), ("r1", 198528, "CPU")]


# ---- kv_cache_memory_bytes: planned -------------------------------------------------------------

def _strategies(tmp_path, **engine_args):
    data = yaml.safe_load((REPO / "strategies" / "sandbox.yml").read_text())
    data["name"] = "sandbox-kvbytes"
    for s in data["services"]:
        s["engine_args"].update(engine_args)
    folder = tmp_path / "strategies"
    folder.mkdir(exist_ok=True)
    (folder / "sandbox-kvbytes.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return str(folder)


def test_kv_cache_memory_bytes_planned_reaches_vllm(tmp_path):
    """The plan carries the planner's KV bytes per worker; ray.serve.llm hands them to vLLM's
    AsyncEngineArgs unchanged (tests/engine_args_probe.py follows ray.serve.llm's own path)."""
    plain = plan_from_inventory(SANDBOX, "sandbox")
    data = plan_from_inventory(SANDBOX, "sandbox-kvbytes", _strategies(tmp_path, kv_cache_memory_bytes="planned"))
    chat = next(s for s in data["services"] if s["name"] == "chat")
    embed = next(s for s in data["services"] if s["name"] == "embed")
    assert chat["engine_args"]["kv_cache_memory_bytes"] == chat["kv_cache"]["bytes"] == 4576259980
    assert "kv_cache_memory_bytes" not in embed["engine_args"]  # a pooling model keeps no KV cache
    # nothing else of the plan changes
    for d in (plain, data):
        d.pop("strategy"), d.pop("inputs", None)
        for s in d["services"]:
            s["engine_args"].pop("kv_cache_memory_bytes", None)
    assert data == plain

    serve = tmp_path / "render" / "serve"
    serve.mkdir(parents=True)
    (serve / "serve_config.yaml").write_text(yaml.safe_dump(build_serve_config(
        plan_from_inventory(SANDBOX, "sandbox-kvbytes", str(tmp_path / "strategies")))))
    run = subprocess.run([sys.executable, REPO / "tests/engine_args_probe.py", str(serve)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.split("PROBE ", 1)[1])[str(serve)]
    assert report["chat"]["kv_cache_memory_bytes"] == 4576259980
    assert report["embed"]["kv_cache_memory_bytes"] is None


@pytest.mark.parametrize("value", [1000, "auto", True])
def test_kv_cache_memory_bytes_other_values_refused(tmp_path, capsys, value):
    folder = _strategies(tmp_path, kv_cache_memory_bytes=value)
    assert main(["plan", "-i", SANDBOX, "-s", "sandbox-kvbytes", "--strategies-dir", folder]) == 2
    assert "kv_cache_memory_bytes" in capsys.readouterr().err


# ---- calibrate: the overlay fed back to the planner ---------------------------------------------

def _status_with_engine(plan: dict, blocks: int, block_size: int = 128) -> dict:
    """What build_status gives for a cluster whose chat engine reported `blocks` blocks."""
    chat = next(s for s in plan["services"] if s["name"] == "chat")
    return {"observed": {"kv_cache": [
        {"service": "chat", "replica_id": "r1", "host": "sandbox-worker-1", "runner": "generate",
         "planned": {"tokens": chat["kv_cache_tokens"]},
         "observed": {"replica_id": "r1", "tokens": blocks * block_size, "blocks": blocks, "block_size": block_size,
                      "source": "metric"}},
        {"service": "embed", "replica_id": "r2", "host": "sandbox-worker-2", "runner": "pooling",
         "planned": {"tokens": None}, "observed": {"replica_id": "r2", "tokens": 0, "blocks": 0, "block_size": 16,
                                                   "source": "metric"}}]}}


@pytest.mark.parametrize("blocks", [1551, 1400, 1700])
def test_calibrate_round_trip(tmp_path, blocks):
    """The overlay makes the planned KV cache of the measured model the observed one, to the block,
    and changes nothing else of the plan."""
    before = plan_from_inventory(SANDBOX, "sandbox")
    found = calibrate.measurements(_status_with_engine(before, blocks), before)
    assert [(e["model"], e["device"]) for e in found] == [("HuggingFaceTB/SmolLM2-135M-Instruct", "cpu")]
    overlay = tmp_path / "calibration.yml"
    overlay.write_text(calibrate.overlay(found, SANDBOX, {"strategy": "sandbox", "applied_at": "t"}, "now"))
    after = plan_from_inventory(SANDBOX, "sandbox", catalog_files=[str(overlay)])
    chat = next(s for s in after["services"] if s["name"] == "chat")
    kv = chat["kv_cache"]
    assert kv["bytes"] // (kv["bytes_per_token"] * 128) == blocks  # the engine's block size
    assert chat["kv_cache_tokens"] == blocks * 128  # 512-token requests: 4 blocks of 128 each
    # nothing but the measured figure moved: chat's overhead, its KV cache and what follows from them
    strip = copy.deepcopy
    b, a = strip(before), strip(after)
    for d in (b, a):
        d.pop("inputs", None)
        chat_d = next(s for s in d["services"] if s["name"] == "chat")
        chat_d.pop("kv_cache_tokens"), chat_d.pop("kv_cache")
        worker = next(g for g in d["gpus"] if g["host"] == "sandbox-worker-1")
        alloc = worker["allocations"][0]
        alloc["parts"].pop("overhead"), alloc["parts"].pop("kv_cache")
    assert a == b
