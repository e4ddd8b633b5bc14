"""The package works outside the checkout: a wheel built from the repository, installed (not
editable) into a fresh venv, finds its playbooks, roles and strategies inside itself and runs
`plan`, `strategies` and `render` from an unrelated folder. `render` runs the shipped
render.yml on localhost only; no host is contacted.

Not exercised here: `apply` from the wheel (it needs a live cluster; the sandbox tests run it
from the checkout, with the same playbooks).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


pytest_plugins = ["early_start"]
_started: list[Future] = []


def build_and_install(root: Path):
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--quiet", "-w", root / "dist", REPO], check=True)
    wheel = next((root / "dist").glob("gpufleet-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    # The same package index and local wheels as the project's own venv (make venv).
    subprocess.run([venv / "bin/pip", "install", "--quiet", "--find-links", "/opt/wheels", wheel], check=True)
    work = root / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_CONFIG", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    env["GPUFLEET_CACHE"] = str(root / "cache")
    return wheel, venv, work, env


def start_early(config) -> Future:
    """Called by tests/early_start.py once the tests are collected: the wheel is built and installed
    in the background while the modules before this one are tested."""
    if not _started:
        pool = ThreadPoolExecutor(max_workers=1)
        _started.append(pool.submit(build_and_install, config._tmp_path_factory.mktemp("wheel")))
        config.add_cleanup(pool.shutdown)
    return _started[0]


@pytest.fixture(scope="module")
def installed(request):
    return start_early(request.config).result()


def run(installed, *args):
    _, venv, work, env = installed
    return subprocess.run([venv / "bin/gpufleet", *map(str, args)], cwd=work, env=env, capture_output=True, text=True)


def test_the_wheel_carries_the_ansible_content(installed):
    names = set(zipfile.ZipFile(installed[0]).namelist())
    for path in ("playbooks/site.yml", "playbooks/files/cluster_probe.py", "roles/ray/tasks/main.yml",
                 "plugins/action/gpufleet_plan.py", "templates/gpufleet_serve_app.py.j2",
                 "strategies/baseline.yml", "ansible.cfg"):
        assert f"gpufleet/ansible/{path}" in names, path


def test_the_installed_package_uses_its_own_content(installed):
    _, venv, work, env = installed
    where = subprocess.run([venv / "bin/python", "-c", "from gpufleet import content; print(content.root())"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where


def test_plan_and_strategies_from_another_folder(installed):
    planned = run(installed, "plan", "-i", REPO / "inventory/production", "-s", "dedicated-node0")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "FITS" in planned.stdout
    refused = run(installed, "plan", "-i", REPO / "inventory/production", "-s", "colocate-4b-util093")
    assert refused.returncode == 3 and "weights_do_not_fit" in refused.stdout
    listed = run(installed, "strategies", "-i", REPO / "inventory/production").stdout.splitlines()
    verdicts = {line.split()[0]: line.split()[1] for line in listed if line.strip()}
    assert verdicts["dedicated-node0"] == "fits" and verdicts["colocate-4b-util093"] == "no-fit", listed


def test_render_with_the_shipped_playbooks(installed):
    _, _, work, _ = installed
    rendered = run(installed, "render", "-i", REPO / "inventory/production", "-s", "dedicated-node0", "-o", "out")
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    config = work / "out/serve/serve_config.yaml"
    assert config.is_file() and "medgemma-27b" in config.read_text()
    assert (work / "out/ray/node-0/ray-head.service").is_file()
    assert len(list((work / "out/ray").glob("node-*/ray-worker.service"))) == 15
