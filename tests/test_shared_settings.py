"""Every setting that more than one role or playbook reads has one owner, roles/gpufleet:
no other role or playbook spells its value, and one override reaches every user (the dashboard
port: the Ray unit, the serve role's `serve` CLI and the status probe). Runs on localhost only.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
OWNER = REPO / "roles/gpufleet/defaults/main.yml"


def ansible_content():
    for folder in ("roles", "playbooks", "templates"):
        for path in sorted((REPO / folder).rglob("*")):
            # the owner's argument spec mirrors its defaults (tests/test_lint.py checks they agree)
            if path.is_file() and path.suffix in (".yml", ".j2") and path.parent.parent != OWNER.parent.parent:
                yield path


def test_shared_values_are_spelled_only_by_their_owner():
    defaults = yaml.safe_load(OWNER.read_text())
    # the distinctive values: folders and ports (names such as "ray" or "token" are ordinary words)
    literals = {str(v) for v in defaults.values()
                if "{{" not in str(v) and (str(v).startswith("/") or str(v).isdigit())}
    assert literals == {"/etc/gpufleet", "/opt/gpufleet", "8265", "9090"}
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in ansible_content()
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if not line.lstrip().startswith("#")
             and any(re.search(rf"(?<![\w.-]){re.escape(value)}(?![\w-])", line) for value in literals)]
    assert found == [], "shared values spelled outside roles/gpufleet:\n" + "\n".join(found)


def test_every_role_that_reads_a_shared_setting_depends_on_the_owner():
    names = set(yaml.safe_load(OWNER.read_text()))
    for role in sorted(p for p in (REPO / "roles").iterdir() if p.name != "gpufleet"):
        text = "\n".join(p.read_text() for p in role.rglob("*") if p.is_file() and p.suffix in (".yml", ".j2"))
        if any(re.search(rf"\b{name}\b", text) for name in names):
            deps = yaml.safe_load((role / "meta/main.yml").read_text())["dependencies"]
            assert {"role": "gpufleet"} in deps, role.name


def test_one_dashboard_port_override_reaches_the_ray_unit(tmp_path):
    """Ray binds the port the shared setting names; `serve deploy` and the status probe address
    gpufleet_ray_dashboard_url, built from the same setting (and no file spells 8265: above)."""
    run = subprocess.run([BIN / "ansible-playbook", "-i", REPO / "inventory/sandbox", REPO / "playbooks/render.yml",
                          "-e", "strategy=sandbox", "-e", f"gpufleet_render_dir={tmp_path}",
                          "-e", "gpufleet_ray_dashboard_port=8311"],
                         cwd=REPO, env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for unit in (tmp_path / "ray").glob("*/ray-*.service"):
        text = unit.read_text()
        assert ("--dashboard-port=8311" in text) == unit.name.startswith("ray-head"), unit
        assert "8265" not in text
    users = {"roles/serve/tasks/deploy.yml": "gpufleet_ray_dashboard_url",
             "playbooks/status.yml": "gpufleet_ray_dashboard_url"}
    for path, name in users.items():
        assert name in (REPO / path).read_text(), path
