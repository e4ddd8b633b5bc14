"""The one path from the inputs to a plan, shared by the CLI and the Ansible plugin.

A plan carries `inputs`: the files it was made from and a digest of each input (the
inventory facts the planner read, the catalog files, the strategy file). A plan file
(`gpufleet plan --out`) is applied only while those digests still match: the plan the
operator confirmed is the plan that runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from .catalog import load_catalog
from .errors import InputError
from .inventory import Cluster, load_cluster
from .planner import plan
from .strategy import load_strategy

PLAN_FILE_VERSION = 1


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_digest(path: str) -> str:
    try:
        return _sha256(Path(path).read_bytes())
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def cluster_digest(cluster: Cluster) -> str:
    """The inventory as the planner read it (every node's facts), not the inventory's files."""
    nodes = [dataclasses.asdict(node) for node in cluster.nodes]
    return _sha256(json.dumps(nodes, sort_keys=True, default=str).encode())


def _inputs(cluster: Cluster, catalog_sources, strategy_file: str) -> dict:
    return {"inventory": cluster_digest(cluster),
            "catalog": [{"file": f, "digest": _file_digest(f)} for f in catalog_sources],
            "strategy": {"file": strategy_file, "digest": _file_digest(strategy_file)}}


def make_plan(cluster: Cluster, strategy: str, strategies_dir: str | None = None, catalog_files=()) -> dict:
    catalog = load_catalog([str(Path(f).resolve()) for f in catalog_files])
    loaded = load_strategy(strategy, strategies_dir)
    data = plan(cluster, catalog, loaded).to_dict()
    data["inputs"] = _inputs(cluster, catalog.sources, str(Path(loaded.file).resolve()))
    return data


def plan_from_inventory(inventory_path: str, strategy: str, strategies_dir: str | None = None,
                        catalog_files=()) -> dict:
    return make_plan(load_cluster(inventory_path), strategy, strategies_dir, catalog_files)


def write_plan_file(data: dict, path: str) -> None:
    """The plan as `gpufleet plan --out` and the plan play's `gpufleet_plan_out` write it (same bytes)."""
    text = json.dumps({"gpufleet_plan_file": PLAN_FILE_VERSION, "plan": data}, indent=2, sort_keys=True) + "\n"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError("unwritable_file", path, "--out", f"cannot write the plan: {exc.strerror}",
                         "name a file in an existing, writable folder") from None


def read_plan_file(path: str, cluster: Cluster) -> dict:
    """A plan made earlier, refused when it is malformed, infeasible, or any of its inputs changed."""
    fix = "make the plan again: gpufleet plan -i INVENTORY -s STRATEGY --out FILE"
    try:
        wrapper = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError("invalid_plan_file", path, "-", f"cannot read a plan from it: {exc}", fix) from None
    data = wrapper.get("plan") if isinstance(wrapper, dict) else None
    if (not isinstance(data, dict) or wrapper.get("gpufleet_plan_file") != PLAN_FILE_VERSION
            or not isinstance(data.get("inputs"), dict) or not isinstance(data.get("strategy"), str)):
        raise InputError("invalid_plan_file", path, "plan",
                         f"is not a gpufleet plan file of version {PLAN_FILE_VERSION}", fix)
    if not data.get("feasible"):
        raise InputError("invalid_plan_file", path, "plan.feasible", "the plan does not fit; it cannot be applied",
                         "change the strategy until `gpufleet plan` says it fits")
    recorded = data["inputs"]
    try:
        now = _inputs(cluster, [c["file"] for c in recorded["catalog"]], recorded["strategy"]["file"])
    except (KeyError, TypeError):
        raise InputError("invalid_plan_file", path, "plan.inputs", "does not list the plan's inputs", fix) from None
    changed = [name for name in ("inventory", "catalog", "strategy") if now[name] != recorded[name]]
    if changed:
        raise InputError("plan_inputs_changed", path, "plan.inputs." + changed[0],
                         f"the {', '.join(changed)} changed since this plan was made; it no longer says what would run",
                         fix)
    return data
