"""The applied record: which strategy (and plan) a cluster runs, on the head and cached on the controller.

On the head, `playbooks/record.yml` (imported last by `site.yml`) writes
`/etc/gpufleet/applied.json` after a successful run, and keeps the one before it as
`/etc/gpufleet/applied-previous.json`. `playbooks/status.yml` reads both back (tag `record`) and
publishes them with `set_stats` as `gpufleet_applied`.

The play is the record's one writer: it also publishes the record it wrote (`set_stats`
`gpufleet_applied_record`), and on the controller `gpufleet apply` caches exactly that, the last
two applied records per inventory:
`<cache>/applied/<inventory-slug>/{current,previous}.json`, where `<cache>` is
`$GPUFLEET_CACHE` or `~/.cache/gpufleet`. `gpufleet diff --offline` and `gpufleet rollback`
read them without touching any host.

A record: {"version", "strategy", "strategies_dir", "applied_at", "plan"}; the plan names its
inventory and the digests of its inputs (`gpufleet.api`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

RECORD_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("GPUFLEET_CACHE") or Path.home() / ".cache" / "gpufleet").expanduser()


def inventory_name(inventory: str) -> str:
    """The inventory's file or folder name, safe in a file name."""
    path = Path(inventory).expanduser().resolve()
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem if path.is_file() else path.name).strip("-.") or "inventory"


def inventory_slug(inventory: str) -> str:
    """A stable folder name per inventory: its name plus a hash of its absolute path."""
    path = Path(inventory).expanduser().resolve()
    return f"{inventory_name(inventory)}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


def applied_dir(inventory: str) -> Path:
    return cache_root() / "applied" / inventory_slug(inventory)


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid applied record ({exc}); remove it or apply again") from None
    return data if isinstance(data, dict) and "plan" in data else None


def read_current(inventory: str) -> dict | None:
    return _read(applied_dir(inventory) / "current.json")


def read_previous(inventory: str) -> dict | None:
    return _read(applied_dir(inventory) / "previous.json")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def same_applied(a: dict | None, b: dict | None) -> bool:
    return (bool(a and b) and a.get("strategy") == b.get("strategy")
            and a.get("plan") == b.get("plan"))


def save_applied(inventory: str, record: dict) -> None:
    """Make RECORD current; the current one becomes previous unless it is the same strategy and plan."""
    folder = applied_dir(inventory)
    current = read_current(inventory)
    if current is not None and not same_applied(current, record):
        _write_json(folder / "previous.json", current)
    _write_json(folder / "current.json", record)


def records_from_stats(stats_data: dict) -> tuple[dict | None, dict | None]:
    """(current, previous) records as `playbooks/status.yml` publishes them from the head."""
    applied = (stats_data or {}).get("gpufleet_applied") or {}

    def one(value):
        if isinstance(value, str) and value.strip():
            try:
                value = json.loads(value)
            except ValueError:
                return None
        return value if isinstance(value, dict) and value.get("plan") else None

    return one(applied.get("current")), one(applied.get("previous"))
