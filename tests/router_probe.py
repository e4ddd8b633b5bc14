"""Drive the router (GpufleetIngress of templates/gpufleet_serve_app.py.j2) with ray.serve.llm's
own call of the model deployments replaced by scripted outcomes and Serve's replica table
(serve.status) by scripted states, and print what each case gave, as JSON: the retry before the
first chunk, the cap on loaded on-demand models, /health, /stats and /v1/models, routing by content
(with the embedding model's call scripted too: a vector per marker word), fallbacks, and idle: sleep
(ray.serve.llm's broadcast to the replicas scripted: vLLM's sleep mode needs a GPU).

    python tests/router_probe.py

Run in its own interpreter (tests/test_router.py): ray.serve.llm's import beside Ansible's
modules breaks as vLLM's does (tests/serve_app_probe.py).
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import tempfile
import time
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


def run_with_parent(parent, cases, timeout_s: float = 60):
    """Run the coroutine function `cases` with ray.serve.llm's call of the model deployments
    (OpenAiIngress._get_response) replaced by `parent`."""
    from ray.serve.llm.ingress import OpenAiIngress

    original = OpenAiIngress._get_response
    OpenAiIngress._get_response = parent
    try:
        return asyncio.run(asyncio.wait_for(cases(), timeout_s))
    finally:
        OpenAiIngress._get_response = original


def run_case(module, members: int, script: list) -> dict:
    """script: one outcome per call of ray.serve.llm's _get_response, in order: "ok" (a stream of two
    chunks), "died" (an exception before the first chunk), "500" (an ErrorResponse first),
    "404" (the HTTPException of an unknown model, raised before any deployment is picked)."""
    from fastapi import HTTPException
    from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse

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

    router = module.GpufleetIngress()
    router._routes = {"m": [(f"handle-{i}", 1) for i in range(members)]}

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

    return {"calls": calls, "picked": picked, "result": run_with_parent(parent, consume, 10)}


def scripted_status(module, tables: list, every_s: float):
    """serve.status() answering tables[i] (model -> {replica state: count}) from i * every_s
    seconds after the first call on; each model's deployment is LLMServer:<model> in app.<model>."""
    from types import SimpleNamespace

    started = []

    def status():
        now = time.monotonic()
        started.append(now)
        table = tables[min(int((now - started[0]) / every_s), len(tables) - 1)]
        return SimpleNamespace(applications={
            f"app.{m}": SimpleNamespace(deployments={f"LLMServer:{m}": SimpleNamespace(replica_states=dict(states))})
            for m, states in table.items()})

    module.serve.status = status


def cap_router(module, models: list, max_loaded, wait_s: float):
    from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard

    router = module.GpufleetIngress()
    router._routes = {m: [(f"handle-{m}", 1)] for m in models}
    router._members = {m: [(f"app.{m}", f"LLMServer:{m}")] for m in models}
    router._model_cards = {m: ModelCard(id=m, object="model", owned_by="gpufleet", permission=[], metadata={})
                           for m in models}
    router._on_demand = {m: 20.0 for m in models}
    router._max_loaded, router._cap_wait_s = max_loaded, wait_s
    return router


async def answering(self, **kwargs):
    """ray.serve.llm's call of a model deployment, scripted: one chunk naming the model."""
    yield f"answer from {kwargs['body'].model}"


class ModelOnly:
    """A request body with only a model name (what the router reads of it here)."""

    def __init__(self, model):
        self.model = model


async def chat_to_end(router, model: str):
    """The guarded /v1/chat/completions endpoint; a stream is read to its end, as a client does."""
    response = await router.chat(ModelOnly(model), request=None)
    if hasattr(response, "body_iterator"):
        async for _ in response.body_iterator:
            pass
    return response


def run_cap_cases(module) -> dict:
    """The cap's cases, each through the guarded /v1/chat/completions endpoint (the 503 and its
    Retry-After header are the wrapper's)."""

    async def chat(router, model):
        started = time.monotonic()
        response = await chat_to_end(router, model)
        return {"status": response.status_code, "retry_after": response.headers.get("retry-after"),
                "seconds": round(time.monotonic() - started, 1),
                "body": json.loads(bytes(response.body)) if hasattr(response, "body") else None}

    async def cases():
        out = {}
        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router = cap_router(module, ["a", "b"], 1, 2.0)
        out["cap 1, a loaded: b waits, then 503"] = await chat(router, "b")
        out["cap 1, a loaded: a answers at once"] = await chat(router, "a")

        scripted_status(module, [{"a": {"RUNNING": 1}}, {"a": {"STOPPING": 1}}, {}], 1.0)
        router = cap_router(module, ["a", "b"], 1, 10.0)
        out["cap 1, a unloads during the wait: b loads"] = await chat(router, "b")
        out["stats after b loaded"] = router._stats["b"] | {"last_used": None, "last_used_mono": None}

        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router = cap_router(module, ["a", "b", "c"], 2, 2.0)
        both = await asyncio.gather(chat(router, "b"), chat(router, "c"))
        out["cap 2, a loaded: b and c at once"] = sorted(r["status"] for r in both)

        scripted_status(module, [{"a": {"STOPPING": 1}}], 60)
        router = cap_router(module, ["a", "b"], 1, 2.0)
        out["cap 1, a only stopping: a again waits, then 503"] = (await chat(router, "a"))["status"]

        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router = cap_router(module, ["a", "b"], 1, 2.0)
        out["cap 1, a loaded: b through a LoRA-style id b:x"] = (await chat(router, "b:x"))["status"]

        scripted_status(module, [{}], 60)
        router = cap_router(module, ["a", "b"], 1, 2.0)
        await asyncio.gather(chat(router, "b"), chat(router, "b"))
        out["cap 1, two requests for cold b at once: loads"] = router._stats["b"]["loads"]

        def unreadable():
            raise RuntimeError("controller gone")

        module.serve.status = unreadable
        router = cap_router(module, ["a", "b"], 1, 2.0)
        out["table unreadable: request"] = (await chat(router, "b"))["status"]
        health = await router.health(request=None)
        out["table unreadable: health"] = health.status_code
        out["table unreadable: models"] = [card.id for card in (await router.models(request=None)).data]

        scripted_status(module, [{"a": {"RUNNING": 1}, "b": {"STARTING": 1}, "c": {"STOPPING": 1}}], 60)
        router = cap_router(module, ["a", "b", "c", "d"], 3, 2.0)
        out["health"] = await router.health(request=None)
        stats = await router.stats(request=None)
        out["stats"] = {m: {k: v[k] for k in ("state", "replicas", "requests")} for m, v in stats["models"].items()}
        listing = await router.models(request=None)
        out["models"] = {card.id: card.metadata["gpufleet"]["state"] for card in listing.data}
        return out

    return run_with_parent(answering, cases)


# The scripted embedding model: one dimension per marker word, counted in the text.
MARKERS = ("python", "hello", "translate", "picture")


def embedding_of(text: str) -> list:
    words = text.lower().split()
    return [float(sum(w.strip(".,?!") == m for w in words)) for m in MARKERS] + [0.1]


def routing_router(module, table: dict, statuses: dict):
    """A router over models code, chat, polyglot, vision and embed (every one RUNNING unless statuses says
    otherwise), with the routing table `table` (the `routing` of the router's user_config)."""
    from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard

    models = ["code", "chat", "polyglot", "vision", "embed"]
    scripted_status(module, [{m: statuses.get(m, {"RUNNING": 1}) for m in models}], 60)
    router = module.GpufleetIngress()
    router._routes = {m: [(f"handle-{m}", 1)] for m in models}
    router._members = {m: [(f"app.{m}", f"LLMServer:{m}")] for m in models}
    router._model_cards = {m: ModelCard(id=m, object="model", owned_by="gpufleet", permission=[], metadata={})
                           for m in models}
    router._route_info = table.get("models") or {}
    router._by_content = table if table.get("domains") else None
    return router


ROUTING = {
    "embedding_model": "embed", "default_model": "chat", "min_score": 0.5,
    "domains": {"coding": ["python python"], "general": ["hello"], "multilingual": ["translate"],
                "multimodal": ["picture"]},
    "models": {"code": {"domain": "coding", "priority": 3, "fallback": ["chat"]},
               "chat": {"domain": "general", "priority": 5},
               "polyglot": {"domain": "multilingual", "priority": 1},
               "vision": {"domain": "multimodal", "priority": 2, "image_input": True}},
}


def run_routing_cases(module) -> dict:
    """Each case through the guarded /v1/chat/completions endpoint with a real ChatCompletionRequest;
    the scripted deployments answer "answer from <the body's model>"."""
    from types import SimpleNamespace

    from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest

    calls, behaviour = [], {"died": set(), "embed fails": False}

    async def parent(self, **kwargs):
        body = kwargs["body"]
        if kwargs["call_method"] == "embeddings":
            calls.append(f"embed {len(body.input)}")
            if behaviour["embed fails"]:
                raise RuntimeError("embedding replica died")
            yield SimpleNamespace(data=[SimpleNamespace(index=i, embedding=embedding_of(t))
                                        for i, t in enumerate(body.input)])
            return
        calls.append(body.model)
        if body.model.split(":")[0] in behaviour["died"]:  # a LoRA-style id runs on its base model
            raise RuntimeError("actor died")
        yield f"answer from {body.model}"

    def request(text, model=None, image=False):
        content = [{"type": "text", "text": text}] + (
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}] if image else [])
        return ChatCompletionRequest(model=model, messages=[
            {"role": "system", "content": "You are helpful. python python python"},
            {"role": "user", "content": content}])

    async def chat(router, body):
        calls.clear()
        try:
            response = await router.chat(body, request=None)
        except Exception as exc:  # what reaches ray.serve.llm's caller (FastAPI turns it into a status)
            return {"raised": f"{type(exc).__name__} {getattr(exc, 'status_code', '')}".strip(), "calls": list(calls)}
        chunks = []
        if hasattr(response, "body_iterator"):
            async for chunk in response.body_iterator:
                chunks.append(chunk)
        return {"status": response.status_code, "answer": "".join(map(str, chunks)), "calls": list(calls)}

    async def cases():
        out = {}
        router = routing_router(module, ROUTING, {})
        out["auto, python text"] = await chat(router, request("Why does my python loop fail?", "auto"))
        out["no model, hello"] = await chat(router, request("hello there"))
        out["no model, translate"] = await chat(router, request("Please translate this"))
        out["below min_score: default"] = await chat(router, request("What is the weather like?"))
        out["image: only a model that takes images"] = await chat(router, request("python python", image=True))
        out["named model is not routed"] = await chat(router, request("hello", "polyglot"))
        tie = {**ROUTING, "domains": {**ROUTING["domains"], "multilingual": ["hello"]}}
        out["tie: the higher priority"] = await chat(routing_router(module, tie, {}), request("hello"))
        out["route endpoint"] = await router.route(request("python python code"), request=None)
        behaviour["embed fails"] = True
        out["embedding fails: default"] = await chat(routing_router(module, ROUTING, {}), request("python"))
        behaviour["embed fails"] = False
        no_vision = {**ROUTING, "models": {k: v for k, v in ROUTING["models"].items() if k != "vision"}}
        out["image, no model takes images"] = await chat(routing_router(module, no_vision, {}),
                                                        request("look", image=True))
        behaviour["died"] = {"code"}
        out["fallback: code died"] = await chat(routing_router(module, ROUTING, {}), request("x", "code"))
        behaviour["died"] = set()
        out["fallback: code has no replica"] = await chat(routing_router(module, ROUTING, {"code": {}}),
                                                          request("x", "code"))
        capped = routing_router(module, ROUTING, {"code": {}, "polyglot": {"RUNNING": 1}})
        capped._on_demand, capped._max_loaded, capped._cap_wait_s = {"code": 20.0, "polyglot": 20.0}, 1, 30.0
        started = time.monotonic()
        out["fallback: code held by the cap"] = await chat(capped, request("x", "code"))
        out["fallback: code held by the cap"]["seconds"] = round(time.monotonic() - started, 1)
        behaviour["died"] = {"code"}
        router = routing_router(module, ROUTING, {})
        out["no fallback: a LoRA id"] = await chat(router, request("x", "code:adapter"))
        calls.clear()
        try:
            async for _ in router._get_response(body=request("x", "code"), call_method="tokenize"):
                pass
            out["no fallback: tokenize"] = {"calls": list(calls)}
        except Exception as exc:
            out["no fallback: tokenize"] = {"raised": type(exc).__name__, "calls": list(calls)}
        behaviour["died"] = set()
        untyped = ChatCompletionRequest(model=None, messages=[{"role": "user", "content": [
            {"type": "text", "text": "python python"}, {"image_url": {"url": "data:image/png;base64,AA=="}}]}])
        out["image part without a type"] = await chat(routing_router(module, ROUTING, {}), untyped)
        return out

    return run_with_parent(parent, cases)


def run_sleep_cases(module) -> dict:
    """idle: sleep, with ray.serve.llm's broadcast (LLMServer.sleep / wakeup on every replica) and the
    deployment handles scripted: what the router asked of which deployment, in order. The router is
    configured through its own reconfigure, as Serve does."""
    calls = []
    failing = set()  # handle names whose broadcast raises

    class Handle:
        def __init__(self, name):
            self.name, self.populated = name, True

        def options(self, **_):
            return self

        def running_replicas_populated(self):
            return self.populated

    handles = {}

    def get_deployment_handle(deployment, app, _check_exists=True):
        return handles.setdefault(deployment, Handle(deployment.replace("LLMServer:", "control-")))

    def scripted_broadcast(handle, method, kwargs=None):
        calls.append([handle.name, method, kwargs])
        if handle.name in failing:
            raise RuntimeError("replica died")
        return [None]

    module.broadcast = scripted_broadcast
    module.serve.get_deployment_handle = get_deployment_handle

    async def chat(router, model):
        return (await chat_to_end(router, model)).status_code

    def table(models, sleep, cap, after):
        return {"models": {m: [{"app": f"app.{m}", "deployment": f"LLMServer:{m}", "weight": 1,
                                "llm_config": {"model_loading_config": {"model_id": m}}}] for m in models},
                "on_demand": {"models": {m: 3600 for m in models}, "max_loaded": cap, "wait_s": 2.0,
                              "sleep": {m: after for m in sleep}}}

    def configured(models, sleep, cap, after=1.0):
        router = module.GpufleetIngress()
        router.reconfigure(table(models, sleep, cap, after))
        return router

    async def cases():
        out = {}
        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router = configured(["a", "b"], ["a"], 1)
        # a router that has just started may find a asleep (put to sleep by the replica before it)
        out["first request for a"] = {"status": await chat(router, "a"), "calls": list(calls)}
        calls.clear()
        # the idle timer: idle 1 s: the router's loop puts it to sleep; its next request wakes it
        await asyncio.sleep(2.5)
        out["idle 1 s: a"] = {"calls": list(calls), "state": (await router.stats(request=None))["models"]["a"]["state"],
                              "health": await router.health(request=None)}
        calls.clear()
        # cap 1 with a asleep: a sleeping model keeps its slot (and its Ray GPU share): b waits, then 503
        out["cap 1, a asleep: b"] = {"status": await chat(router, "b"), "calls": list(calls)}
        calls.clear()
        out["a again"] = {"status": await chat(router, "a"), "calls": list(calls)}
        calls.clear()
        stats = (await router.stats(request=None))["models"]["a"]
        out["stats after the wake"] = {k: stats[k] for k in ("state", "sleeps", "wakes", "requests", "idle_sleep_s")}
        # a request in flight keeps a model awake however long ago it started
        router._stats["a"].update(in_flight=1, last_used_mono=time.monotonic() - 60)
        await asyncio.sleep(2.5)
        out["in flight for 60 s: a"] = {"calls": list(calls), "asleep": sorted(router._asleep)}
        router._stats["a"]["in_flight"] = 0
        # while another model is loading, nothing is put to sleep (the loading engine sizes its KV cache
        # from the device's free memory)
        scripted_status(module, [{"a": {"RUNNING": 1}, "b": {"STARTING": 1}}], 60)
        router._view = None
        await asyncio.sleep(2.5)
        out["b loading: a idle"] = {"calls": list(calls), "asleep": sorted(router._asleep)}
        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router._view = None
        await asyncio.sleep(2.5)
        out["idle again: asleep"] = sorted(router._asleep)
        calls.clear()
        # Serve unloads a (idle_unload_s): its next request loads a new replica, which starts awake
        scripted_status(module, [{}], 60)
        router._view = None
        out["after Serve unloaded a"] = (await router.stats(request=None))["models"]["a"]["state"]
        out["a after the unload"] = {"status": await chat(router, "a"), "calls": list(calls),
                                     "asleep": sorted(router._asleep), "wake_first": sorted(router._wake_first)}
        router._sleeper.cancel()
        calls.clear()

        # a sleep that fails: the model is not shown asleep, but its next request wakes it first
        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router = configured(["a"], ["a"], None)
        await chat(router, "a")
        calls.clear()
        failing.add("control-a")
        await asyncio.sleep(2.5)
        out["failed sleep"] = {"calls": list(calls), "asleep": sorted(router._asleep),
                               "wake_first": sorted(router._wake_first)}
        failing.clear()
        calls.clear()
        out["after the failed sleep: a"] = {"status": await chat(router, "a"), "calls": list(calls)}
        calls.clear()
        # a failed wake is logged and the request goes on; the model is woken again next time
        router._wake_first = frozenset({"a"})
        failing.add("control-a")
        out["failed wake: a"] = {"status": await chat(router, "a"), "wake_first": sorted(router._wake_first)}
        failing.clear()
        router._sleeper.cancel()
        calls.clear()

        # a model that leaves the sleep table while asleep is still woken before its next request
        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router = configured(["a"], ["a"], None)
        await chat(router, "a")
        await asyncio.sleep(2.5)
        calls.clear()
        router.reconfigure({"models": table(["a"], [], None, 1.0)["models"]})
        out["left the table: a"] = {"status": await chat(router, "a"), "calls": list(calls)}
        router._sleeper.cancel()
        calls.clear()

        # a deployment that never had a running replica is not broadcast to (broadcast would wait 30 s)
        handles["LLMServer:a"].populated = False
        scripted_status(module, [{"a": {"RUNNING": 1}}], 60)
        router = configured(["a"], ["a"], None)
        started = time.monotonic()
        out["not populated: a"] = {"status": await chat(router, "a"), "calls": list(calls),
                                   "seconds": round(time.monotonic() - started, 1)}
        handles["LLMServer:a"].populated = True
        calls.clear()
        return out

    return run_with_parent(answering, cases)


def main() -> int:
    module = load_router()
    cases = {
        "first deployment died, second answers": (2, ["died", "ok"]),
        "first answered 500, second answers": (2, ["500", "ok"]),
        "every deployment died": (2, ["died", "died", "died"]),
        "one deployment, it died": (1, ["died", "ok"]),
        "unknown model": (2, ["404", "404", "404"]),
    }
    result = {name: run_case(module, *case) for name, case in cases.items()}
    result.update(run_cap_cases(module))
    result.update(run_routing_cases(module))
    result.update(run_sleep_cases(module))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
