"""What the installed CPU build of vLLM allows of sleep mode (idle: sleep), run for real: it refuses
enable_sleep_mode (vllm/config/model.py:655-656, platforms/interface.py:231-236: CUDA, ROCm and XPU
only), which is why the planner refuses idle: sleep on CPU nodes (sleep_needs_gpu). Sleep and wake
themselves (LLMServer.sleep / wakeup through ray.serve.llm's broadcast) need a GPU and are not run
here: tests/test_router.py drives the router's side of them with the broadcast scripted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
from vllm.config import ModelConfig
from vllm.platforms import current_platform
out = {"device": current_platform.device_type, "available": current_platform.is_sleep_mode_available()}
ModelConfig(model=sys.argv[1], skip_tokenizer_init=True)
out["plain"] = "accepted"
try:
    ModelConfig(model=sys.argv[1], skip_tokenizer_init=True, enable_sleep_mode=True)
    out["sleep"] = "accepted"
except Exception as exc:
    out["sleep"] = str(exc)
print(json.dumps(out))
"""
# The smallest Llama that vLLM's ModelConfig reads from a local folder (no weights, no tokenizer).
TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2,
              "vocab_size": 256, "max_position_embeddings": 512, "torch_dtype": "bfloat16"}


def test_the_cpu_build_refuses_sleep_mode(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    run = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["available"] is False, out
    assert out["plain"] == "accepted"  # the same config without sleep mode is fine
    assert "Sleep mode is not supported on current platform" in out["sleep"], out
