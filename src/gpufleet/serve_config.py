"""The plan's vLLM services as one Ray Serve declarative config (the file `serve deploy` reads).

One application (`templates/gpufleet_serve_app.py.j2`, built on `ray.serve.llm`) serves every
vLLM service of the plan behind a single OpenAI-compatible endpoint that routes by the request's
`model`; services that share a model name (a dedicated replica beside an autoscaled pool) share
its requests in proportion to their planned replica maximum (`args.capacity`). The config splits
each service in two on purpose:

- `args.llm_configs` (code): model, engine arguments, placement-group bundles and label
  selectors. Serve hashes `args` into the application's code version, so changing any of these
  rebuilds the application and restarts its replicas, as a new placement requires anyway.
- `deployments` (overrides): replica counts and autoscaling bounds. Serve applies these in
  place, without restarting replicas (a strategy that only changes bounds rescales live).

Why the placement lives in `placement_group_bundle_label_selector` even for one-GPU replicas:
`ray.serve.llm` always schedules a vLLM replica inside a placement group
(`LLMServer.get_deployment_options`), and Serve only steers placement-group replicas by their
bundle selectors; `ray_actor_options.label_selector` is still set on single-bundle replicas so the
replica actor itself carries the same constraint. `accelerator_type` is never set: Ray Serve LLM
rewrites "A10" to "A10G", which on-prem A10 nodes never advertise.
"""
from __future__ import annotations

from . import engine_args as planned_args

APP_NAME = "gpufleet"
APP_MODULE = "gpufleet_serve_app"
IMPORT_PATH = f"{APP_MODULE}:build_app"
# Deployment names as ray.serve.llm builds them: "<server class>:<deployment_config.name>" for
# each model, and the ingress class name for the router.
LLM_DEPLOYMENT_PREFIX = "LLMServer:"
INGRESS_DEPLOYMENT = "GpufleetIngress"
HEAD_SELECTOR = {"gpufleet.io/group": "head"}
DEFAULT_PLACEMENT_STRATEGY = "STRICT_PACK"

DEFAULTS = {
    "app_name": APP_NAME,
    # Folder on the head holding the application module; the build task and the ingress run there.
    "app_dir": "/opt/gpufleet/serve",
    "route_prefix": "/",
    "http_host": "0.0.0.0",
    "http_port": 8000,
    "request_timeout_s": None,
    "proxy_location": "HeadOnly",
    "api_key_sha256": None,
    "ingress_num_cpus": 1.0,
    # Environment of every model replica and its engine workers (for example HF_HUB_OFFLINE).
    "env_vars": {},
    # Checksum of the installed application module: part of the app's runtime_env, so a new
    # module makes Serve rebuild the application even when nothing else changed.
    "app_version": None,
}


def endpoint(plan: dict, port: int = DEFAULTS["http_port"]) -> str | None:
    """The OpenAI base URL of a plan's cluster: Serve's HTTP proxy on the head."""
    head = next((n for n in plan.get("nodes") or [] if n.get("group") == "head"), None)
    return f"http://{head['address']}:{port}/v1" if head else None


class ServeConfigError(ValueError):
    """The plan cannot be turned into a Serve config (not feasible, or not the expected shape)."""


def _replica_overrides(service: dict) -> dict:
    replicas = service["replicas"]
    if replicas.get("autoscaling"):
        autoscaling = {
            "min_replicas": replicas["min"],
            "max_replicas": replicas["max"],
            "initial_replicas": replicas["initial"],
        }
        if replicas.get("target_ongoing_requests") is not None:
            autoscaling["target_ongoing_requests"] = replicas["target_ongoing_requests"]
        return {"autoscaling_config": autoscaling}
    # ray.serve.llm sets a default autoscaling_config in code; a fixed count must clear it.
    return {"num_replicas": replicas["max"], "autoscaling_config": None}


def _llm_config(service: dict, env_vars: dict) -> dict:
    name = service["name"]
    ray = service.get("ray")
    if not ray or not ray.get("bundles"):
        raise ServeConfigError(f"service {name!r}: a vLLM service needs ray.bundles in the plan")
    engine_args = dict(service.get("engine_args") or {})
    # The plan holds every argument the planner read at the value it planned with; ray.serve.llm
    # and vLLM would fill a missing one with their own default (max_num_seqs differs, for one).
    kind = "gpu" if any(b.get("GPU") for b in ray["bundles"]) else "cpu"
    missing = [a for a in planned_args.passed("vllm", kind) if a not in engine_args]
    if missing:
        raise ServeConfigError(f"service {name!r}: the plan lacks engine_args {', '.join(missing)}; "
                               "plan it again with this gpufleet")
    if "accelerator_type" in engine_args:
        raise ServeConfigError(f"service {name!r}: accelerator_type is not an engine argument; "
                               "select nodes with labels (ray.io/accelerator-type) instead")
    bundles = [dict(b) for b in ray["bundles"]]
    bundle_selectors = [dict(s) for s in ray.get("bundle_label_selector") or []]
    if bundle_selectors and len(bundle_selectors) not in (1, len(bundles)):
        raise ServeConfigError(f"service {name!r}: {len(bundle_selectors)} bundle label selectors "
                               f"for {len(bundles)} bundles")
    deployment_config: dict = {"name": name}
    if bundle_selectors:
        deployment_config["placement_group_bundle_label_selector"] = bundle_selectors
    if len(bundles) == 1 and service.get("label_selector"):
        deployment_config["ray_actor_options"] = {"label_selector": dict(service["label_selector"])}
    config = {
        "model_loading_config": {
            "model_id": service["route"]["model_name"],
            "model_source": service.get("model_source") or service["model"],
        },
        "engine_kwargs": engine_args,
        "placement_group_config": {
            "bundles": bundles,
            "strategy": ray.get("placement_strategy") or DEFAULT_PLACEMENT_STRATEGY,
        },
        "deployment_config": deployment_config,
        # vLLM's metrics (vllm:cache_config_info: the engine's own KV blocks and tokens) through Ray's
        # metrics agent on the replica's node, which `gpufleet status` reads. ray.serve.llm's default
        # (llm_config.py), written out so that a later default cannot turn it off.
        "log_engine_metrics": True,
    }
    if env_vars:
        config["runtime_env"] = {"env_vars": {k: str(v) for k, v in env_vars.items()}}
    return config


def vllm_services(plan: dict) -> list:
    return [s for s in plan.get("services") or [] if s.get("engine") == "vllm"]


def build_serve_config(plan: dict, options: dict | None = None) -> dict:
    """Serve declarative config (a dict ServeDeploySchema accepts) for the plan's vLLM services."""
    if not plan.get("feasible", False):
        codes = ", ".join(sorted({e.get("code", "?") for e in plan.get("errors") or []})) or "no verdict"
        raise ServeConfigError(f"plan for strategy {plan.get('strategy')!r} is not feasible ({codes})")
    unknown = sorted(set(options or {}) - set(DEFAULTS))
    if unknown:
        raise ServeConfigError(f"unknown serve config options: {', '.join(unknown)}")
    opts = {**DEFAULTS, **{k: v for k, v in (options or {}).items() if v is not None}}

    http_options = {"host": opts["http_host"], "port": int(opts["http_port"])}
    if opts["request_timeout_s"] is not None:
        http_options["request_timeout_s"] = float(opts["request_timeout_s"])
    config = {"proxy_location": opts["proxy_location"], "http_options": http_options, "applications": []}

    services = vllm_services(plan)
    if not services:
        return config  # deploying an empty list removes gpufleet's application

    app_env = {"PYTHONPATH": opts["app_dir"]}
    if opts["app_version"]:
        app_env["GPUFLEET_APP_VERSION"] = str(opts["app_version"])
    deployments = [{"name": LLM_DEPLOYMENT_PREFIX + s["name"], **_replica_overrides(s)} for s in services]
    # Pinning the ingress to the head also pins Serve's build task there (Serve runs it on the
    # shared label selector of the config's deployments), which is where the module is installed.
    deployments.append({
        "name": INGRESS_DEPLOYMENT,
        "ray_actor_options": {"num_cpus": float(opts["ingress_num_cpus"]), "label_selector": dict(HEAD_SELECTOR)},
    })
    config["applications"].append({
        "name": opts["app_name"],
        "route_prefix": opts["route_prefix"],
        "import_path": IMPORT_PATH,
        "runtime_env": {"env_vars": app_env},
        "args": {
            "llm_configs": [_llm_config(s, opts["env_vars"]) for s in services],
            "api_key_sha256": opts["api_key_sha256"],
            # Services sharing a model name split its requests in proportion to these.
            "capacity": {s["name"]: s["replicas"]["max"] for s in services},
        },
        "deployments": deployments,
    })
    return config
