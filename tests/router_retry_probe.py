"""Drive the router's retry (GpufleetIngress._get_response of templates/gpufleet_serve_app.py.j2)
with ray.serve.llm's own call replaced by scripted outcomes, and print what each case gave, as JSON.

    python tests/router_retry_probe.py

Run in its own interpreter (tests/test_router_retry.py): ray.serve.llm's import beside Ansible's
modules breaks as vLLM's does (tests/serve_app_probe.py).
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "gpufleet_serve_app.py.j2"


def load_router():
    source = TEMPLATE.read_text().split("\n", 1)[1]  # line 1 is Ansible's managed comment
    folder = Path(tempfile.mkdtemp())
    (folder / "gpufleet_serve_app.py").write_text(source)
    spec = importlib.util.spec_from_file_location("gpufleet_serve_app", folder / "gpufleet_serve_app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpufleet_serve_app"] = module
    spec.loader.exec_module(module)
    return module


def run_case(module, members: int, script: list) -> dict:
    """script: one outcome per call of ray.serve.llm's _get_response, in order: "ok" (a stream of two
    chunks), "died" (an exception before the first chunk), "500" (an ErrorResponse first),
    "404" (the HTTPException of an unknown model, raised before any deployment is picked)."""
    from fastapi import HTTPException
    from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse
    from ray.serve.llm.ingress import OpenAiIngress

    calls, picked = [], []

    async def parent(self, **kwargs):
        outcome = script[min(len(calls), len(script) - 1)]
        calls.append(outcome)
        if outcome == "404":
            raise HTTPException(404, "no such model")
        picked.append(self._get_configured_serve_handle(kwargs["body"].model))
        if outcome == "died":
            raise RuntimeError("actor died")
        if outcome == "500":
            yield ErrorResponse(error=ErrorInfo(message="engine dead", type="InternalServerError", code=500))
            return
        yield "chunk-1"
        yield "chunk-2"

    router = module.GpufleetIngress.__new__(module.GpufleetIngress)
    router._routes = {"m": [(f"handle-{i}", 1) for i in range(members)]}
    router._configured_serve_handles = {}

    class Body:
        model = "m"

    async def consume():
        out = []
        try:
            async for item in router._get_response(body=Body(), call_method="chat"):
                out.append(item if isinstance(item, str) else f"error {item.error.code}")
        except Exception as exc:  # what reaches ray.serve.llm's caller
            out.append(f"raised {type(exc).__name__} {getattr(exc, 'status_code', '')}".strip())
        return out

    original = OpenAiIngress._get_response
    OpenAiIngress._get_response = parent
    try:
        result = asyncio.run(asyncio.wait_for(consume(), 10))
    finally:
        OpenAiIngress._get_response = original
    return {"calls": calls, "picked": picked, "result": result}


def main() -> int:
    module = load_router()
    cases = {
        "first deployment died, second answers": (2, ["died", "ok"]),
        "first answered 500, second answers": (2, ["500", "ok"]),
        "every deployment died": (2, ["died", "died", "died"]),
        "one deployment, it died": (1, ["died", "ok"]),
        "unknown model": (2, ["404", "404", "404"]),
    }
    print(json.dumps({name: run_case(module, *case) for name, case in cases.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
