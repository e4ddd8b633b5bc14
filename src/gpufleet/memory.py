"""Memory arithmetic of one engine instance (pure functions; formulas documented in README.md).

Units: bytes in, MiB (float) out unless a name says otherwise.
"""
from __future__ import annotations

import math

from .catalog import DTYPE_BYTES, Model

MIB = 1024 * 1024
VLLM_DEFAULT_UTILIZATION = 0.92  # vLLM's CacheConfig default


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def valid_tp_sizes(model: Model, limit: int = 16) -> list[int]:
    return [tp for tp in range(1, limit + 1) if tp_problem(model, tp) is None]


def tp_problem(model: Model, tp: int) -> str | None:
    """vLLM's rule: TP divides the attention heads, and the KV heads divide or are divided by TP."""
    if model.attention_heads % tp:
        return (f"tensor_parallel_size {tp} does not divide the {model.attention_heads} attention heads "
                f"({model.attention_heads} % {tp} = {model.attention_heads % tp})")
    if model.kv_heads % tp and tp % model.kv_heads:
        return (f"tensor_parallel_size {tp} neither divides nor is a multiple of the {model.kv_heads} KV heads")
    return None


def kv_bytes_per_token_layer(model: Model, tp: int, dtype_bytes: int) -> int:
    """K and V of one token in one layer on one GPU: 2 x KV heads per GPU x head_dim x bytes."""
    return 2 * max(1, model.kv_heads // tp) * model.head_dim * dtype_bytes


def weights_mib(model: Model, dtype: str, tp: int) -> float:
    size = model.weights_bytes.get(dtype)
    if size is None:
        size = next(iter(model.weights_bytes.values())) * DTYPE_BYTES[dtype] / DTYPE_BYTES.get(
            next(iter(model.weights_bytes)), 2)
    return size / tp / MIB


def activation_mib(model: Model, tp: int, dtype_bytes: int, batched_tokens: int, max_num_seqs: int) -> float:
    """Peak of vLLM's profiling run: a batch of max_num_batched_tokens through one layer's
    residual stream and MLP (sharded by TP), plus float32 logits for max_num_seqs (generate only)."""
    per_token = (4 * model.hidden_size + 2 * model.intermediate_size / tp) * dtype_bytes
    logits = max_num_seqs * model.vocab_size * 4 if model.runner == "generate" else 0
    return (batched_tokens * per_token + logits) / MIB


def kv_layout(model: Model) -> tuple[int, int, int]:
    """(layers per KV block, full-attention groups, sliding-window groups) of vLLM's KV-cache manager.

    Uniform attention: one group of all layers. Hybrid (sliding + full, as Gemma 3):
    vLLM 0.32 (v1/core/kv_cache_utils.py) splits each attention type into groups of
    `group_size` layers, the smaller type's count, or the larger's when it is under
    1.5x the smaller; the groups share one pool of blocks of group_size pages."""
    full, sliding = model.full_layers, model.sliding_layers
    if not sliding or not full:
        return model.layers, (0 if not full else 1), (1 if not full else 0)
    small, large = min(full, sliding), max(full, sliding)
    group = large if large < small * 1.5 else small
    return group, cdiv(full, group), cdiv(sliding, group)


def blocks_per_sequence(model: Model, max_model_len: int, block_size: int, batched_tokens: int) -> tuple[int, int]:
    """(blocks a full-attention layer, blocks a sliding-window layer) needs for one sequence."""
    full = cdiv(max_model_len, block_size)
    if not model.sliding_layers:
        return full, 0
    window = min(model.sliding_window - 1 + batched_tokens, max_model_len)
    return full, cdiv(window, block_size) + 1


def kv_cache_tokens(model: Model, kv_mib: float, tp: int, dtype_bytes: int, block_size: int,
                    max_model_len: int, batched_tokens: int) -> int:
    """Tokens vLLM reports as its KV-cache size ("GPU KV cache size: N tokens"): the
    concurrency the block pool allows for max_model_len sequences, times max_model_len."""
    if model.runner != "generate" or kv_mib <= 0:
        return 0
    layers_per_block, full_groups, sliding_groups = kv_layout(model)
    page = block_size * kv_bytes_per_token_layer(model, tp, dtype_bytes)
    blocks = int(kv_mib * MIB) // (page * layers_per_block)
    full_blocks, sliding_blocks = blocks_per_sequence(model, max_model_len, block_size, batched_tokens)
    per_sequence = full_groups * full_blocks + sliding_groups * sliding_blocks
    return max(0, int(blocks / per_sequence * max_model_len))


def one_sequence_mib(model: Model, max_model_len: int, tp: int, dtype_bytes: int, block_size: int,
                     batched_tokens: int) -> float:
    """KV memory one max_model_len sequence needs (vLLM's check_enough_kv_cache_memory):
    full layers hold every token; sliding layers hold min(window - 1 + batched tokens, len);
    plus the null block the block pool holds back."""
    if model.runner != "generate":
        return 0.0
    page = block_size * kv_bytes_per_token_layer(model, tp, dtype_bytes)
    full_blocks, sliding_blocks = blocks_per_sequence(model, max_model_len, block_size, batched_tokens)
    null_block = kv_layout(model)[0]  # the block vLLM's pool holds back, in pages
    return (model.full_layers * full_blocks + model.sliding_layers * sliding_blocks + null_block) * page / MIB


def longest_sequence(model: Model, kv_mib: float, tp: int, dtype_bytes: int, block_size: int,
                     batched_tokens: int) -> int:
    """The longest max_model_len whose single sequence fits in kv_mib (what vLLM suggests)."""
    low, high = 0, model.max_context
    while low < high:
        mid = (low + high + 1) // 2
        if one_sequence_mib(model, mid, tp, dtype_bytes, block_size, batched_tokens) <= kv_mib:
            low = mid
        else:
            high = mid - 1
    return low


def ollama_mib(arch: Model, size_bytes: int, context_length: int, num_parallel: int, kv_dtype_bytes: int) -> tuple[float, float]:
    """(weights, KV cache) of an Ollama model in MiB: GGUF size, and f16 K/V for every layer
    over context_length x num_parallel tokens (llama.cpp's cache, sliding layers counted in full)."""
    kv = arch.layers * kv_bytes_per_token_layer(arch, 1, kv_dtype_bytes) * context_length * num_parallel
    return size_bytes / MIB, kv / MIB


def ceil_share(fraction: float) -> float:
    """A Ray logical GPU amount: the fraction rounded up to a hundredth, at most 1."""
    return min(1.0, math.ceil(round(fraction * 100, 6)) / 100)
