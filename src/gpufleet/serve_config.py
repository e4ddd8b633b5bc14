"""The plan's vLLM services as a Ray Serve declarative config (the file `serve deploy` reads).

Every vLLM service is an application of its own (`gpufleet.<service>.<digest>`, built by
`build_model` in `templates/gpufleet_serve_app.py.j2` on `ray.serve.llm`: one LLMServer
deployment, no HTTP route), and one router application (`gpufleet`, `build_router`, the
OpenAI-compatible endpoint on route `/`) reaches them with `serve.get_deployment_handle`. So a
strategy switch rebuilds only the services that changed: Serve rebuilds an application when its
code version changes (`deploy_utils.get_app_code_version`: a hash of import_path, runtime_env and
args) and leaves the other applications alone (`application_state.py`, `apply_app_config`).

- A service application's `args.llm_config` (code): model, engine arguments, placement-group
  bundles and label selectors. Its name ends with a digest of exactly what Serve hashes into its
  code version, so one name is one build: a changed service is a new application that can start
  beside the old one (make-before-break, gpufleet.transition), and an unchanged one keeps its name.
- Its `deployments` overrides (scale): replica counts and autoscaling bounds, and the drain time
  on removal (`graceful_shutdown_timeout_s`). Serve applies these in place.
- The router's routing table is its deployment's `user_config` (model name -> the applications and
  deployments serving it, with their planned replica maximum as weight; services sharing a model
  name split its requests in proportion). Serve applies a new `user_config` by calling the running
  router's `reconfigure` (`_private/version.py`: `requires_actor_reconfigure`, not
  `requires_actor_restart`), so pointing traffic elsewhere restarts nothing. The router's code (its
  args) is only the API key's digest.

Why the placement lives in `placement_group_bundle_label_selector` even for one-GPU replicas:
`ray.serve.llm` always schedules a vLLM replica inside a placement group
(`LLMServer.get_deployment_options`), and Serve only steers placement-group replicas by their
bundle selectors; `ray_actor_options.label_selector` is still set on single-bundle replicas so the
replica actor itself carries the same constraint. `accelerator_type` is never set: Ray Serve LLM
rewrites "A10" to "A10G", which on-prem A10 nodes never advertise.
"""
from __future__ import annotations

import copy
import hashlib
import json

from . import engine_args as planned_args

# The router application: the OpenAI endpoint. Service applications are APP_NAME.<service>.<digest>
# (service names are [a-z0-9-], so the dots split them unambiguously).
APP_NAME = "gpufleet"
APP_MODULE = "gpufleet_serve_app"
ROUTER_IMPORT_PATH = f"{APP_MODULE}:build_router"
MODEL_IMPORT_PATH = f"{APP_MODULE}:build_model"
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
    # Seconds a removed model replica waits for its requests in flight before it stops
    # (Serve's graceful_shutdown_timeout_s; Serve's default is 20, ray/serve/_private/constants.py:270).
    "drain_timeout_s": 120,
    # Seconds a request for an unloaded on-demand model waits for one of the max_loaded_models
    # loaded ones to unload before the router answers 503 with Retry-After.
    "loaded_cap_wait_s": 30,
}


def endpoint(plan: dict, port: int = DEFAULTS["http_port"]) -> str | None:
    """The OpenAI base URL of a plan's cluster: Serve's HTTP proxy on the head."""
    head = next((n for n in plan.get("nodes") or [] if n.get("group") == "head"), None)
    return f"http://{head['address']}:{port}/v1" if head else None


class ServeConfigError(ValueError):
    """The plan cannot be turned into a Serve config (not feasible, or not the expected shape)."""


def service_app_name(service: str, app: dict, router: str = APP_NAME) -> str:
    """<router>.<service>.<digest of what Serve hashes into the application's code version>."""
    code = {k: app.get(k) for k in ("import_path", "runtime_env", "args")}
    digest = hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()[:10]
    return f"{router}.{service}.{digest}"


def service_of_app(app_name: str, router: str = APP_NAME) -> str | None:
    """The service a service application serves (None for the router or a foreign application)."""
    parts = app_name.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == router else None


def llm_configs(config: dict) -> list:
    """The LLMConfigs (dicts) of a Serve config's service applications, in its order."""
    return [app["args"]["llm_config"] for app in config.get("applications") or []
            if "llm_config" in (app.get("args") or {})]


def llm_deployments(apps: dict, router: str = APP_NAME) -> dict:
    """service -> (application name, its LLMServer deployment) in Serve's view of the applications
    (`serve status`, or the dashboard's details): each service application's deployment, and the
    deployments of a single application of every service (the layout before service applications).
    When a switch has a service in two applications, the one whose deployment serves wins."""
    found: dict = {}
    for app_name, app in sorted((apps or {}).items()):
        service = service_of_app(app_name, router)
        for dname, dep in ((app or {}).get("deployments") or {}).items():
            if not dname.startswith(LLM_DEPLOYMENT_PREFIX):
                continue
            name = dname[len(LLM_DEPLOYMENT_PREFIX):]
            if (app_name == router or service == name) and (
                    name not in found or (dep or {}).get("status") == "HEALTHY"):
                found[name] = (app_name, dep or {})
    return found


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
        if "idle_unload_s" in service:  # on demand: ray/serve/config.py:693 (the 1 -> 0 step only)
            autoscaling["downscale_to_zero_delay_s"] = service["idle_unload_s"]
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


def _app_env(opts: dict) -> dict:
    env = {"PYTHONPATH": opts["app_dir"]}
    if opts["app_version"]:
        env["GPUFLEET_APP_VERSION"] = str(opts["app_version"])
    return env


def _options(options: dict | None) -> dict:
    unknown = sorted(set(options or {}) - set(DEFAULTS))
    if unknown:
        raise ServeConfigError(f"unknown serve config options: {', '.join(unknown)}")
    return {**DEFAULTS, **{k: v for k, v in (options or {}).items() if v is not None}}


def service_apps(plan: dict, options: dict | None = None) -> list:
    """One Serve application per vLLM service of the plan (each named by service_app_name)."""
    opts = _options(options)
    apps = []
    for service in vllm_services(plan):
        app = {
            "route_prefix": None,  # reached through the router only
            "import_path": MODEL_IMPORT_PATH,
            "runtime_env": {"env_vars": _app_env(opts)},
            "args": {"llm_config": _llm_config(service, opts["env_vars"])},
            "deployments": [{
                "name": LLM_DEPLOYMENT_PREFIX + service["name"], **_replica_overrides(service),
                "graceful_shutdown_timeout_s": float(opts["drain_timeout_s"]),
            }],
        }
        apps.append({"name": service_app_name(service["name"], app, opts["app_name"]), **app})
    return apps


def routes(apps: list, plan: dict, router: str = APP_NAME, cap_wait_s: float = DEFAULTS["loaded_cap_wait_s"]) -> dict:
    """The router's user_config: model name -> [{app, deployment, weight, llm_config}] over the
    given service applications; weight is the service's planned replica maximum. `on_demand`: the
    model names served only by on-demand services (-> their longest idle_unload_s), the plan's
    max_loaded_models, how long a request waits for a free slot under it and, for the models whose
    services have idle: sleep, the idle seconds after which the router puts them to sleep."""
    capacity = {s["name"]: s["replicas"]["max"] for s in vllm_services(plan)}
    idle = {s["name"]: s["idle_unload_s"] for s in vllm_services(plan) if "idle_unload_s" in s}
    models: dict = {}
    services: dict = {}  # model name -> the services answering to it
    for app in apps:
        service = service_of_app(app["name"], router)
        llm = app["args"]["llm_config"]
        services.setdefault(llm["model_loading_config"]["model_id"], []).append(service)
        models.setdefault(llm["model_loading_config"]["model_id"], []).append({
            "app": app["name"], "deployment": LLM_DEPLOYMENT_PREFIX + service,
            # a copy: the router reads its model card (context length, modality) from it
            "weight": int(capacity.get(service, 1)), "llm_config": copy.deepcopy(llm),
        })
    on_demand = {model: max(idle[s] for s in names) for model, names in services.items()
                 if all(s in idle for s in names)}
    sleep = {s["name"]: s["idle_sleep_s"] for s in vllm_services(plan) if s.get("idle") == "sleep"}
    table: dict = {"models": models}
    if on_demand:
        table["on_demand"] = {"models": on_demand, "max_loaded": plan.get("max_loaded_models"),
                              "wait_s": float(cap_wait_s)}
        asleep_after = {model: min(sleep[s] for s in names) for model, names in services.items()
                        if model in on_demand and all(s in sleep for s in names)}
        if asleep_after:
            table["on_demand"]["sleep"] = asleep_after
    routing = _routing(plan, models)
    if routing:
        table["routing"] = routing
    return table


def _routing(plan: dict, models: dict) -> dict:
    """The router's routing by content and fallbacks: the plan's routing, and per model name its
    domain, priority, fallbacks and whether it takes images. Empty when the plan has neither
    routing nor a fallback (services sharing a model name share their route: gpufleet.strategy)."""
    info = {}
    for service in vllm_services(plan):
        route = service["route"]
        if route["model_name"] in models:
            info[route["model_name"]] = {key: route[key] for key in ("domain", "priority", "fallback", "image_input")
                                         if key in route}
    if not plan.get("routing") and not any(i.get("fallback") for i in info.values()):
        return {}
    return {**copy.deepcopy(plan.get("routing") or {}), "models": {m: i for m, i in info.items() if i}}


def router_app(user_config: dict, options: dict | None = None) -> dict:
    """The router application: the OpenAI endpoint, with the routing table as user_config."""
    opts = _options(options)
    return {
        "name": opts["app_name"],
        "route_prefix": opts["route_prefix"],
        "import_path": ROUTER_IMPORT_PATH,
        "runtime_env": {"env_vars": _app_env(opts)},
        "args": {"api_key_sha256": opts["api_key_sha256"]},
        # Pinning the router to the head also pins Serve's build task there (Serve runs it on the
        # shared label selector of the config's deployments), where the module is installed.
        "deployments": [{
            "name": INGRESS_DEPLOYMENT,
            "ray_actor_options": {"num_cpus": float(opts["ingress_num_cpus"]), "label_selector": dict(HEAD_SELECTOR)},
            "user_config": user_config,
        }],
    }


def deploy_config(apps: list, options: dict | None = None) -> dict:
    """The whole declarative config around the given applications."""
    opts = _options(options)
    http_options = {"host": opts["http_host"], "port": int(opts["http_port"])}
    if opts["request_timeout_s"] is not None:
        http_options["request_timeout_s"] = float(opts["request_timeout_s"])
    return {"proxy_location": opts["proxy_location"], "http_options": http_options, "applications": list(apps)}


def build_serve_config(plan: dict, options: dict | None = None) -> dict:
    """Serve declarative config (a dict ServeDeploySchema accepts) for the plan's vLLM services:
    the router application, then one application per service."""
    if not plan.get("feasible", False):
        codes = ", ".join(sorted({e.get("code", "?") for e in plan.get("errors") or []})) or "no verdict"
        raise ServeConfigError(f"plan for strategy {plan.get('strategy')!r} is not feasible ({codes})")
    apps = service_apps(plan, options)
    if not apps:
        return deploy_config([], options)  # deploying an empty list removes gpufleet's applications
    router = _options(options)["app_name"]
    table = routes(apps, plan, router, _options(options)["loaded_cap_wait_s"])
    return deploy_config([router_app(table, options), *apps], options)
