"""What vLLM would be started with, for each rendered Serve config, as JSON.

    python tests/engine_args_probe.py RENDER_DIR/serve [...]   # per service: AsyncEngineArgs values
    python tests/engine_args_probe.py --fields                 # AsyncEngineArgs field names

Follows ray.serve.llm's own path (ray/llm/_internal/serve/engines/vllm/vllm_engine.py,
_get_vllm_engine_config): LLMConfig -> get_engine_config().get_initialization_kwargs() ->
_normalize_vllm_engine_kwargs -> vllm AsyncEngineArgs(**kwargs). Stops before
create_engine_config, which needs the model's files. Run in its own interpreter: vLLM's import
breaks in a process where Ansible was imported first.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import yaml


def fields() -> list:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return [f.name for f in dataclasses.fields(AsyncEngineArgs)]


def probe(serve_dirs: list) -> dict:
    from ray.llm._internal.serve.engines.vllm.vllm_engine import _normalize_vllm_engine_kwargs
    from ray.serve.llm import LLMConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    report = {}
    for folder in serve_dirs:
        config = yaml.safe_load((Path(folder) / "serve_config.yaml").read_text())
        services = report.setdefault(str(folder), {})
        for app in config["applications"]:
            for raw in [app["args"]["llm_config"]] if "llm_config" in (app.get("args") or {}) else []:
                kwargs = _normalize_vllm_engine_kwargs(LLMConfig(**raw).get_engine_config().get_initialization_kwargs())
                args = AsyncEngineArgs(**kwargs)
                services[raw["deployment_config"]["name"]] = {
                    f.name: getattr(args, f.name) for f in dataclasses.fields(args)
                    if isinstance(getattr(args, f.name), (bool, int, float, str, type(None)))}
    return report


if __name__ == "__main__":
    result = fields() if sys.argv[1:] == ["--fields"] else probe(sys.argv[1:])
    print("PROBE " + json.dumps(result))
