"""The engine arguments the planner reads, and the value it assumes when a strategy omits one.

One table per engine. The plan carries every one of these arguments with the value the planner
sized with (the planner fills the omitted ones from here), so that what the plan says is what the
engine runs with: the Serve config passes a vLLM service's `engine_args` as `engine_kwargs`
(ray.serve.llm's and vLLM's own defaults differ from the planner's, max_num_seqs for one), and
an Ollama unit gets them as its server's environment (gpufleet.ollama_unit).

tests/test_engine_args.py reads planner.py and fails when the planner reads an engine argument
that is missing here or assumes another default for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory import VLLM_DEFAULT_UTILIZATION


@dataclass(frozen=True)
class EngineConstant:
    """A default the planner takes from the catalog's `engines.<engine>` constants."""
    key: str
    fallback: object


# The model's context length (catalog `max_context`).
MODEL_CONTEXT = "model.max_context"

VLLM = {
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": VLLM_DEFAULT_UTILIZATION,
    "max_model_len": MODEL_CONTEXT,
    "dtype": "bfloat16",
    "kv_cache_dtype": "auto",
    "enforce_eager": False,
    "max_num_batched_tokens": EngineConstant("max_num_batched_tokens", 2048),
    "max_num_seqs": EngineConstant("max_num_seqs", 256),
    "block_size": EngineConstant("block_size", 16),
    # None: vLLM decides (on for generating models on GPUs), and the planner models that decision
    # (memory.max_concurrent_batches); passed as null, which is vLLM's own default.
    "async_scheduling": None,
}
OLLAMA = {
    "context_length": EngineConstant("context_length", 4096),
    "num_parallel": EngineConstant("num_parallel", 1),
    "kv_cache_type": "f16",
}
PLANNED = {"vllm": VLLM, "ollama": OLLAMA}
# Arguments a strategy may set to "planned": the plan carries the planner's own figure for them,
# taken from the service's planned KV cache (the plan's `kv_cache`). kv_cache_memory_bytes: vLLM 0.32
# then allocates exactly the planner's KV bytes per worker instead of sizing the cache from
# gpu_memory_utilization (CUDA: v1/worker/gpu_worker.py:649-676, the profile run still runs but the
# KV size is the given one; CPU: v1/worker/cpu_worker.py:200-232, "Explicitly set ... for KV cache"),
# so the engine's KV cache equals the plan by construction. Pooling models keep no KV cache: the
# argument is dropped for them.
FROM_PLAN = {"vllm": {"kv_cache_memory_bytes": "bytes"}}
PLANNED_VALUE = "planned"
# Passed to vLLM only for replicas on GPUs: vLLM's CPU backend runs kernel blocks of a multiple of
# 32 tokens and cannot start with 16 (it picks 128 when none is given). The planner sizes CPU
# replicas with block_size 16 as well, so their KV-token figure is approximate.
GPU_ONLY = frozenset({"block_size"})


def default(engine: str, name: str, model=None, engines: dict | None = None):
    """The value the planner assumes for `name` when the strategy omits it."""
    rule = PLANNED[engine][name]
    if isinstance(rule, EngineConstant):
        return (engines or {}).get(engine, {}).get(rule.key, rule.fallback)
    if rule == MODEL_CONTEXT:
        return model.max_context
    return rule


def passed(engine: str, device_kind: str = "gpu") -> list:
    """The planned arguments the engine is started with on a device of this kind."""
    return [name for name in PLANNED.get(engine, {}) if device_kind == "gpu" or name not in GPU_ONLY]


def planned(engine: str, engine_args: dict, model=None, engines: dict | None = None,
            device_kind: str = "gpu", kv_cache: dict | None = None) -> dict:
    """The strategy's engine_args with every argument the planner reads, omitted ones at the
    planner's default, and those set to "planned" at the planner's figure (FROM_PLAN, from the
    service's planned `kv_cache`). Arguments the planner does not read pass through unchanged."""
    args = dict(engine_args)
    for name in passed(engine, device_kind):
        if name not in args:
            args[name] = default(engine, name, model, engines)
    for name, figure in FROM_PLAN.get(engine, {}).items():
        if args.get(name) == PLANNED_VALUE:
            if kv_cache and kv_cache.get(figure):
                args[name] = int(kv_cache[figure])
            else:
                del args[name]
    return args
