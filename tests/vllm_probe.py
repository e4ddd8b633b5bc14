"""Both vLLM probes for many rendered Serve folders in one interpreter, as JSON (tests/test_render.py).

    python tests/vllm_probe.py RENDER_DIR/serve [...]

Imports vLLM and ray.serve.llm once instead of once per folder: per folder, "app" is what
tests/serve_app_probe.py reports (the application built the way the Serve controller builds it) and
"engine_args" what tests/engine_args_probe.py reports (vLLM's AsyncEngineArgs per service). A folder
whose probe raises gets "app_error" / "engine_args_error" (the traceback) instead, so that one broken
folder fails only the tests that read it. Run in its own interpreter: vLLM's import breaks in a
process where Ansible was imported first.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_args_probe  # noqa: E402
import serve_app_probe  # noqa: E402


def main(folders: list) -> dict:
    report = {}
    for folder in folders:
        entry = report.setdefault(str(folder), {})
        sys.modules.pop("gpufleet_serve_app", None)
        try:
            entry["app"] = serve_app_probe.probe(Path(folder))
        except Exception:  # reported to the test that reads this folder
            entry["app_error"] = traceback.format_exc()
        try:
            entry["engine_args"] = engine_args_probe.probe([folder])[str(folder)]
        except Exception:
            entry["engine_args_error"] = traceback.format_exc()
    return report


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(sys.argv[1:])))
