"""Where gpufleet's Ansible content lives: playbooks, roles, plugins, templates, strategies and
ansible.cfg. A wheel carries them inside the package (`gpufleet/ansible/`, see pyproject.toml);
a checkout (or an editable install) keeps them at the top of the repository."""
from __future__ import annotations

from functools import cache
from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "ansible"
CHECKOUT = Path(__file__).resolve().parents[2]


@cache
def root() -> Path:
    for candidate in (PACKAGED, CHECKOUT):
        if (candidate / "playbooks" / "site.yml").is_file():
            return candidate
    raise RuntimeError(f"gpufleet's playbooks are neither in {PACKAGED} nor in {CHECKOUT}: reinstall gpufleet")


def playbook(name: str) -> Path:
    return root() / "playbooks" / name
