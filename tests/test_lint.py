"""ansible-lint (production profile) passes on the playbooks and roles, and every role's
meta/argument_specs.yml mirrors its defaults/main.yml."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROLES = ["gpufleet", "ray", "serve", "ollama", "gpu_preflight"]
PLAYBOOKS = [f"playbooks/{p}.yml" for p in ("site", "plan", "preflight", "ray", "ollama", "serve", "render")]


def test_ansible_lint_production_profile():
    result = subprocess.run(
        [BIN / "ansible-lint", "--profile", "production", *PLAYBOOKS, *(f"roles/{r}" for r in ROLES)],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_mirror_defaults(role):
    defaults = yaml.safe_load((REPO / f"roles/{role}/defaults/main.yml").read_text())
    specs = yaml.safe_load((REPO / f"roles/{role}/meta/argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert set(options) == set(defaults), set(options) ^ set(defaults)
    for name, spec in options.items():
        assert spec.get("description"), f"{role}: {name} has no description"
        assert spec.get("default") == defaults[name], f"{role}: {name} default differs from defaults/main.yml"
    for name in defaults:
        assert name.startswith(f"{role}_"), f"{role}: {name} is not prefixed with the role name"
