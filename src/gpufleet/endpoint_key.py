"""The endpoint's API key on the controller: where it is kept and how clients read it.

Unless the inventory opts out (`serve_auth: open`) or sets its own `serve_api_key`, the serve role
generates a random key on the first apply (Ansible's `password` lookup: mode 0600 in a 0700
folder) at `<cache>/keys/<inventory-slug>/serve-api-key`, the same per-inventory folder naming as
the applied record. Only its SHA-256 reaches the cluster; the smoke client, `gpufleet apply`'s
summary and the tests read it from here."""
from __future__ import annotations

import os
from pathlib import Path

from .record import cache_root, inventory_slug

ENV_VAR = "GPUFLEET_API_KEY"


def key_file(inventory: str) -> Path:
    return cache_root() / "keys" / inventory_slug(inventory) / "serve-api-key"


def read_key(inventory: str) -> str | None:
    """The key clients send: $GPUFLEET_API_KEY, else the generated one, else None (none made yet)."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    try:
        return key_file(inventory).read_text().strip() or None
    except FileNotFoundError:
        return None


def usage(inventory: str) -> str:
    path = key_file(inventory)
    return (f"clients send 'Authorization: Bearer <key>'; the key is in {path} on this controller "
            f"(for example: export OPENAI_API_KEY=$(cat {path}))")
