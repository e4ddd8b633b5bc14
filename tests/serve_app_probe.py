"""Build a rendered Serve application the way the Serve controller does, without running it,
and print what each deployment would get, as JSON.

    python tests/serve_app_probe.py RENDER_DIR/serve

Run in its own interpreter: vLLM's import (torch dynamo) breaks in a process where Ansible's
modules were imported first (Ansible patches sys.intern).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import yaml


def probe(serve_dir: Path) -> dict:
    from ray.serve._private.application_state import override_deployment_info
    from ray.serve._private.build_app import build_app
    from ray.serve._private.deploy_utils import deploy_args_to_deployment_info
    from ray.serve.llm import LLMConfig
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    config = yaml.safe_load((serve_dir / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    spec = importlib.util.spec_from_file_location("gpufleet_serve_app", serve_dir / "gpufleet_serve_app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpufleet_serve_app"] = module
    spec.loader.exec_module(module)

    report = {"ingress": None, "apps": {}, "deployments": {}, "engine_env": {}}
    for app_config in config["applications"]:
        builder = getattr(module, app_config["import_path"].split(":", 1)[1])
        built = build_app(builder(app_config["args"]), name=app_config["name"], default_runtime_env={})
        route_prefix = app_config.get("route_prefix")
        if route_prefix:
            built.validate_single_fastapi_ingress()
            report["ingress"] = built.ingress_deployment_name
        infos = {}
        for deployment in built.deployments:
            deployment_config = deployment._deployment_config
            deployment_config.version = "probe"
            ingress = deployment.name == built.ingress_deployment_name
            infos[deployment._name] = deploy_args_to_deployment_info(
                deployment_name=deployment._name,
                deployment_config_proto_bytes=deployment_config.to_proto_bytes(),
                replica_config_proto_bytes=deployment._replica_config.to_proto_bytes(),
                deployer_job_id="probe", app_name=app_config["name"], ingress=ingress,
                route_prefix=route_prefix if ingress else None)
        effective = override_deployment_info(infos, ServeApplicationSchema.model_validate(app_config))
        report["apps"][app_config["name"]] = sorted(effective)
        for name, info in effective.items():
            scaling = info.deployment_config.autoscaling_config
            replica = info.replica_config
            report["deployments"][name] = {
                "app": app_config["name"],
                "num_replicas": info.deployment_config.num_replicas,
                "autoscaling": None if scaling is None else {
                    "min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                    "initial_replicas": scaling.initial_replicas,
                    "target_ongoing_requests": scaling.target_ongoing_requests},
                "placement_group_bundles": replica.placement_group_bundles,
                "placement_group_strategy": replica.placement_group_strategy,
                "placement_group_bundle_label_selector": replica.placement_group_bundle_label_selector,
                "label_selector": replica.ray_actor_options.get("label_selector"),
                "accelerator_type": replica.ray_actor_options.get("accelerator_type"),
                "num_cpus": replica.ray_actor_options.get("num_cpus"),
                "user_config": info.deployment_config.user_config,
                "graceful_shutdown_timeout_s": info.deployment_config.graceful_shutdown_timeout_s,
            }
    for app_config in config["applications"]:
        raw = (app_config.get("args") or {}).get("llm_config")
        if raw:
            engine = LLMConfig(**raw).get_engine_config()
            report["engine_env"][raw["deployment_config"]["name"]] = \
                engine.get_runtime_env_with_local_env_vars().get("env_vars", {})
    report["endpoints"] = endpoints(module)
    report["bearer"] = bearer_checks(module)
    return report


def endpoints(module) -> dict:
    import inspect

    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS

    return {name: {"request": "request" in inspect.signature(getattr(module.GpufleetIngress, name)).parameters,
                   "qualname": getattr(module.GpufleetIngress, name).__qualname__}
            for name in DEFAULT_ENDPOINTS}


def bearer_checks(module) -> dict:
    import hashlib

    class Request:
        def __init__(self, header):
            self.headers = {"authorization": header} if header else {}

    digest = hashlib.sha256(b"s3cret").hexdigest()
    results = {}
    for header in ("Bearer s3cret", None, "Bearer wrong", "Basic s3cret", "s3cret"):
        try:
            module._check_bearer(Request(header), digest)
            results[str(header)] = "allowed"
        except module.ApiKeyError:
            results[str(header)] = "denied"
    module._check_bearer(Request(None), None)  # no key configured: open
    return results


if __name__ == "__main__":
    print("PROBE " + json.dumps(probe(Path(sys.argv[1]))))
