"""vLLM 0.32's own KV-cache sizing for a model the planner sizes, as JSON (tests/test_planner.py runs it).

    python tests/kv_cache_probe.py CONFIG_JSON_DIR TP MAX_MODEL_LEN ASYNC KV_BYTES [KV_BYTES ...]
    python tests/kv_cache_probe.py --many JSON   # JSON: a list of such argument lists; prints a list

Builds a real VllmConfig from a local config.json (no weights, no tokenizer), the per-layer KV-cache
specs the attention layers of that model register (FullAttentionSpec / SlidingWindowSpec, KV heads
split over TP), and calls vllm.v1.core.kv_cache_utils.get_kv_cache_configs, the function the engine
core calls with each worker's measured KV memory. Per KV_BYTES: the tokens vLLM would log ("GPU KV
cache size"), the number of blocks, or the error it raises when one max_model_len request does not
fit. ASYNC (1/0) sets scheduler_config.async_scheduling as vLLM's GPU path does (on this CPU-only
machine the CPU platform hook turns it off). Run in its own interpreter: vLLM's import breaks in a
process where Ansible was imported first.
"""
from __future__ import annotations

import json
import sys


def main(argv: list) -> dict:
    import torch
    from vllm.config import ModelConfig, VllmConfig
    from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts, resolve_kv_cache_layout
    from vllm.v1.core.kv_cache_utils import get_kv_cache_capacity, get_kv_cache_configs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

    folder, tp, max_len, use_async = argv[0], int(argv[1]), int(argv[2]), argv[3] == "1"
    model = ModelConfig(model=folder, max_model_len=max_len, skip_tokenizer_init=True, dtype="bfloat16")
    config = VllmConfig(model_config=model)
    config.scheduler_config.async_scheduling = use_async
    config.parallel_config.tensor_parallel_size = tp
    text = model.hf_text_config
    kv_heads = max(1, text.num_key_value_heads // tp)
    types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    specs = {}
    for i, kind in enumerate(types):
        common = dict(block_size=16, num_kv_heads=kv_heads, head_size=text.head_dim, dtype=torch.bfloat16)
        specs[f"model.layers.{i}.self_attn.attn"] = (
            SlidingWindowSpec(sliding_window=text.sliding_window, **common) if kind == "sliding_attention"
            else FullAttentionSpec(**common))
    # the engine core resolves one layout before sizing (v1/engine/core.py:293-300); no backend declared:
    # vLLM's default preference (backends/utils.py:209-225)
    layouts = [layout.name for layout in get_supported_kv_cache_layouts([])]
    resolve_kv_cache_layout(config, [layouts], list(specs.values()))
    out = {"max_concurrent_batches": config.max_concurrent_batches, "results": []}
    for raw in argv[4:]:
        try:
            (kv_config,) = get_kv_cache_configs(config, [dict(specs)], [int(raw)])
        except ValueError as exc:
            out["results"].append({"kv_bytes": int(raw), "error": str(exc)})
            continue
        tokens, _ = get_kv_cache_capacity(config, kv_config)
        out["results"].append({"kv_bytes": int(raw), "tokens": tokens, "num_blocks": kv_config.num_blocks,
                               "groups": len(kv_config.kv_cache_groups)})
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--many"]:  # one interpreter (one vLLM import) for several sizings
        print(json.dumps([main(list(map(str, argv))) for argv in json.loads(sys.argv[2])]))
    else:
        print(json.dumps(main(sys.argv[1:])))
