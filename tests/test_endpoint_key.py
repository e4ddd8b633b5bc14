"""The endpoint's API key: made on the first apply, kept on the controller only, hashed into the cluster.

The Serve config is rendered by the serve role's own render tasks (after the real plan play) on
localhost, with the controller cache in tmp_path; no host is contacted. That the running endpoint
refuses a request without the key is checked on the sandbox (molecule/serve/verify.yml), and that the
key reaches no run artifact, record, kept file or process list in tests/test_cli_apply.py.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpufleet import endpoint_key
from gpufleet.cli import main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SANDBOX = REPO / "inventory" / "sandbox"


def render_serve(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path / "render"
    playbook = tmp_path / "render_serve.yml"
    playbook.write_text(f"""\
- name: Plan
  ansible.builtin.import_playbook: {REPO / "playbooks" / "plan.yml"}
- name: Render the Serve config only
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Render
      ansible.builtin.include_role:
        name: serve
        tasks_from: render.yml
      vars:
        serve_plan: "{{{{ gpufleet_plan }}}}"
        serve_render_dir: {out}
""")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "GPUFLEET_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([BIN / "ansible-playbook", "-i", SANDBOX, playbook, "-e", "strategy=sandbox", *extra],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = yaml.safe_load((out / "serve_config.yaml").read_text())
    return result, config, out


def api_key_sha256(config: dict):
    """What the router application checks keys against (the one application the endpoint's routes enter)."""
    (router,) = [app for app in config["applications"] if app.get("route_prefix")]
    return router["args"]["api_key_sha256"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(endpoint_key.ENV_VAR, raising=False)
    return tmp_path / "cache"


def test_the_key_lives_in_the_controller_cache_per_inventory(cache, monkeypatch):
    path = endpoint_key.key_file(str(SANDBOX))
    assert path.parent.parent == cache / "keys" and path.name == "serve-api-key"
    assert endpoint_key.key_file(str(REPO / "inventory" / "production")) != path
    assert endpoint_key.read_key(str(SANDBOX)) is None
    path.parent.mkdir(parents=True)
    path.write_text("k" * 48 + "\n")
    assert endpoint_key.read_key(str(SANDBOX)) == "k" * 48
    monkeypatch.setenv(endpoint_key.ENV_VAR, "from-the-environment")
    assert endpoint_key.read_key(str(SANDBOX)) == "from-the-environment"


def test_first_render_makes_a_private_key_and_only_its_hash_is_rendered(cache, tmp_path):
    result, config, out = render_serve(tmp_path)
    path = endpoint_key.key_file(str(SANDBOX))
    key = path.read_text().strip()
    assert len(key) == 48 and key.isalnum()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert api_key_sha256(config) == hashlib.sha256(key.encode()).hexdigest()
    for rendered in out.iterdir():
        assert key not in rendered.read_text(), rendered
    assert key not in result.stdout + result.stderr

    _, again, _ = render_serve(tmp_path)
    assert path.read_text().strip() == key and api_key_sha256(again) == api_key_sha256(config)


def test_an_open_endpoint_is_an_explicit_choice(cache, tmp_path):
    _, config, _ = render_serve(tmp_path, "-e", "serve_auth=open")
    assert api_key_sha256(config) is None
    assert not endpoint_key.key_file(str(SANDBOX)).exists()


def test_a_key_of_ones_own_replaces_the_generated_one(cache, tmp_path):
    own = "x" * 40
    _, config, _ = render_serve(tmp_path, "-e", f"serve_api_key={own}")
    assert api_key_sha256(config) == hashlib.sha256(own.encode()).hexdigest()
    assert not endpoint_key.key_file(str(SANDBOX)).exists()


def inventory_with(tmp_path: Path, line: str) -> str:
    """inventory/sandbox with one more line in its group_vars/all.yml."""
    inventory = tmp_path / line.replace(": ", "-")
    shutil.copytree(SANDBOX, inventory)
    with open(inventory / "group_vars" / "all.yml", "a") as group_vars:
        group_vars.write(line + "\n")
    return str(inventory)


def test_plan_warns_about_an_open_endpoint(tmp_path, capsys):
    assert main(["plan", "-i", inventory_with(tmp_path, "serve_auth: open"), "-s", "sandbox"]) == 0
    out = capsys.readouterr().out
    assert "[endpoint_open] serve_auth:" in out and "without a key" in out
    assert main(["plan", "-i", inventory_with(tmp_path, "serve_auth: api_key"), "-s", "sandbox"]) == 0
    assert "endpoint_open" not in capsys.readouterr().out


def test_an_unknown_auth_mode_is_bad_input(tmp_path, capsys):
    assert main(["plan", "-i", inventory_with(tmp_path, "serve_auth: none"), "-s", "sandbox"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_field]" in err and "serve_auth: must be one of api_key, open, got 'none'" in err


def test_with_several_inventories_the_key_belongs_to_the_hosts_one(cache, tmp_path):
    """molecule passes its own inventory beside the project's: the host's inventory_dir picks the project's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpufleet_filters", REPO / "plugins" / "filter" / "gpufleet.py")
    filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filters)
    other = tmp_path / "molecule-inventory"
    other.mkdir()
    expected = str(endpoint_key.key_file(str(SANDBOX)))
    assert filters.api_key_file([str(SANDBOX)]) == expected
    assert filters.api_key_file([str(other), str(SANDBOX)], str(SANDBOX)) == expected
    assert filters.api_key_file([str(other), str(SANDBOX / "hosts.yml")], str(SANDBOX)) == str(
        endpoint_key.key_file(str(SANDBOX / "hosts.yml")))
    with pytest.raises(Exception, match="belongs to one inventory"):
        filters.api_key_file([str(other), str(SANDBOX)])
