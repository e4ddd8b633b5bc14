"""Entry points that tie the inputs to the planner: used by the CLI and the Ansible plugin."""
from __future__ import annotations

from .catalog import load_catalog
from .inventory import cluster_from_hostvars, load_cluster
from .planner import plan
from .strategy import load_strategy


def plan_from_hostvars(groups: dict, hostvars: dict, strategy: str, strategies_dir: str | None = None,
                       catalog_files=(), source: str = "inventory") -> dict:
    cluster = cluster_from_hostvars(groups, hostvars, source)
    return plan(cluster, load_catalog(catalog_files), load_strategy(strategy, strategies_dir)).to_dict()


def plan_from_inventory(inventory_path: str, strategy: str, strategies_dir: str | None = None,
                        catalog_files=()) -> dict:
    cluster = load_cluster(inventory_path)
    return plan(cluster, load_catalog(catalog_files), load_strategy(strategy, strategies_dir)).to_dict()
