"""The playbooks parse, and a strategy the planner refuses stops the run before any host is touched.

Hosts here are loopback only (127.0.0.x, connection local): the production inventory is only
ever syntax-checked.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLAYBOOKS = ["site", "plan", "preflight", "ray", "ollama", "serve", "render"]
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}


def loopback_inventory(path: Path, workers: int = 3) -> Path:
    """A production-shaped cluster (4 x A10 per node) on loopback addresses, run locally."""
    hosts = {f"node-{i}": {"ansible_host": f"127.0.0.{i + 2}"} for i in range(workers + 1)}
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "gpufleet_gpus": {"count": 4, "model": "A10", "memory_mib": 23028}},
        "children": {
            "ray_head": {"hosts": {"node-0": hosts["node-0"]}},
            "ray_workers": {"hosts": {h: v for h, v in hosts.items() if h != "node-0"}},
        },
    }}
    path.write_text(yaml.safe_dump(inventory))
    return path


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_syntax_check(name):
    result = subprocess.run(
        [BIN / "ansible-playbook", "--syntax-check", "-i", REPO / "inventory/production",
         REPO / f"playbooks/{name}.yml"],
        cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_list_hosts_production_touches_nothing():
    result = subprocess.run(
        [BIN / "ansible-playbook", "--list-hosts", "-i", REPO / "inventory/production", REPO / "playbooks/site.yml"],
        cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "node-15" in result.stdout


def test_refused_strategy_stops_in_the_plan_play(tmp_path):
    ansible_runner = pytest.importorskip("ansible_runner")
    inventory = loopback_inventory(tmp_path / "loopback.yml")
    (tmp_path / "runner").mkdir()
    events = []
    run = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        project_dir=str(REPO),
        playbook=str(REPO / "playbooks/site.yml"),
        inventory=str(inventory),
        extravars={"strategy": "split-tp3"},
        envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": f"{BIN}:{os.environ['PATH']}"},
        event_handler=lambda e: events.append(e) or True,
        suppress_env_files=True,
        quiet=True,
    )
    assert run.status == "failed" and run.rc != 0

    host_events = [e for e in events if e.get("event", "").startswith("runner_on_")]
    hosts = {e["event_data"].get("host") for e in host_events}
    assert hosts == {"localhost"}, f"tasks ran on {hosts}"
    failed = [e for e in host_events if e["event"] == "runner_on_failed"]
    assert len(failed) == 1
    data = failed[0]["event_data"]
    assert data["task"] == "Plan the strategy with the gpufleet planner"
    assert "tp_not_divisor" in data["res"]["msg"]
    assert "tp_not_divisor" in {e["code"] for e in data["res"]["errors"]}

    plays = [e["event_data"]["play"] for e in events if e.get("event") == "playbook_on_play_start"]
    assert plays == ["Plan the strategy"], plays
    stats = [e for e in events if e.get("event") == "playbook_on_stats"][-1]["event_data"]
    touched = set(stats["ok"]) | set(stats["changed"]) | set(stats["failures"]) | set(stats["skipped"])
    assert touched == {"localhost"}


def test_strategies_dir_override(tmp_path):
    """-e gpufleet_strategies_dir=DIR plans from that folder (same meaning as --strategies-dir)."""
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    (strategies / "only-here.yml").write_text((REPO / "strategies/dedicated-node0.yml").read_text()
                                              .replace("name: dedicated-node0", "name: only-here"))
    result = subprocess.run(
        [BIN / "ansible-playbook", "-i", loopback_inventory(tmp_path / "inv.yml"), REPO / "playbooks/plan.yml",
         "-v", "-e", "strategy=only-here", "-e", f"gpufleet_strategies_dir={strategies}"],
        cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "only-here'' is feasible" in result.stdout
