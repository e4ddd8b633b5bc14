"""One plan, handed on: the CLI and the plan play read the inventory the same way and write the
same plan, byte for byte; a plan file is applied only while its inputs are unchanged; no
playbook picks a strategy by itself; Ray's play needs no strategy.

Every play here runs on localhost only (the plan play, connection local); inventories with
real addresses are only read, never contacted.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpufleet.cli import main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}

WORKSTATION_FIT = """name: small-chat
description: one Qwen3-0.6B per GPU pair of the workstation
services:
  - name: qwen
    model: Qwen/Qwen3-0.6B
    engine: vllm
    engine_args: {tensor_parallel_size: 2, gpu_memory_utilization: 0.5, max_model_len: 4096}
    replicas: 2
    route: {model_name: qwen}
"""


def templated_inventory(folder: Path) -> Path:
    """Values the planner reads that only Ansible's templating resolves (loopback addresses)."""
    (folder / "group_vars").mkdir(parents=True)
    (folder / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "vars": {"site_gpu_memory": 23028, "site_pool": "cxr"},
        "children": {"ray_head": {"hosts": {"node-0": {"ansible_host": "127.0.0.2"}}},
                     "ray_workers": {"hosts": {"node-1": {"ansible_host": "127.0.0.3"},
                                               "node-2": {"ansible_host": "127.0.0.4", "gpufleet_node_labels":
                                                          {"gpufleet.io/pool": "{{ site_pool }}"}}}}}}}))
    (folder / "group_vars/all.yml").write_text(
        'gpufleet_gpus: {count: 4, model: A10, memory_mib: "{{ site_gpu_memory }}"}\n'
        'gpufleet_node_ip: "{{ ansible_host }}"\n')
    return folder


def play(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "ansible-playbook", *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True)


CASES = [("inventory/production", "dedicated-node0", None), ("inventory/production", "cxr-worker", None),
         ("inventory/sandbox", "sandbox", None), ("inventory/workstation", "small-chat", WORKSTATION_FIT),
         ("templated", "cxr-worker", None)]


@pytest.mark.parametrize("inventory,strategy,extra", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_cli_plan_and_play_plan_are_the_same_bytes(tmp_path, inventory, strategy, extra):
    inventory = templated_inventory(tmp_path / "inv") if inventory == "templated" else REPO / inventory
    strategies = REPO / "strategies"
    if extra:
        strategies = tmp_path / "strategies"
        strategies.mkdir()
        (strategies / f"{strategy}.yml").write_text(extra)
    cli_file, play_file = tmp_path / "cli.json", tmp_path / "play.json"
    assert main(["plan", "-i", str(inventory), "-s", strategy, "--strategies-dir", str(strategies),
                 "--out", str(cli_file)]) == 0
    run = play("-i", inventory, REPO / "playbooks/plan.yml", "-e", f"strategy={strategy}",
               "-e", f"gpufleet_strategies_dir={strategies}", "-e", f"gpufleet_plan_out={play_file}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert cli_file.read_bytes() == play_file.read_bytes()


def test_templated_values_reach_the_plan(tmp_path):
    plan = json.loads(subprocess.run(
        [BIN / "gpufleet", "plan", "-i", templated_inventory(tmp_path / "inv"), "-s", "cxr-worker", "--format", "json"],
        env=ENV, capture_output=True, text=True, check=True).stdout)
    assert [n["address"] for n in plan["nodes"]] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert plan["nodes"][2]["labels"]["gpufleet.io/pool"] == "cxr"
    assert {g["memory_mib"] for g in plan["gpus"]} == {23028 - 513}  # usable: an A10 reserves 513 MiB (catalog)
    cxr = next(s for s in plan["services"] if s["model"].startswith("nvidia/"))
    assert {p["host"] for p in cxr["placements"]} == {"node-2"}


@pytest.fixture
def planned(tmp_path):
    """A copy of the templated inventory and of one strategy, planned to a file by the CLI."""
    inventory = templated_inventory(tmp_path / "inv")
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    shutil.copy(REPO / "strategies/cxr-worker.yml", strategies)
    plan_file = tmp_path / "plan.json"
    assert main(["plan", "-i", str(inventory), "-s", "cxr-worker", "--strategies-dir", str(strategies),
                 "--out", str(plan_file)]) == 0
    return inventory, strategies, plan_file


def test_the_play_applies_the_plan_file_as_it_is(planned, tmp_path):
    inventory, _, plan_file = planned
    echoed = tmp_path / "echo.json"
    run = play("-i", inventory, REPO / "playbooks/plan.yml", "-e", f"gpufleet_plan_file={plan_file}",
               "-e", f"gpufleet_plan_out={echoed}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert echoed.read_bytes() == plan_file.read_bytes()


@pytest.mark.parametrize("change", ["strategy", "inventory", "catalog"])
def test_a_plan_file_whose_inputs_changed_is_refused(planned, tmp_path, change):
    inventory, strategies, plan_file = planned
    if change == "strategy":
        path = strategies / "cxr-worker.yml"
        path.write_text(path.read_text().replace("max: 16", "max: 15"))
    elif change == "inventory":
        (inventory / "group_vars/all.yml").write_text(
            (inventory / "group_vars/all.yml").read_text() + "gpufleet_cpus: 8\n")
    else:  # the plan names its catalog files; the built-in one stands for all
        data = json.loads(plan_file.read_text())
        catalog = tmp_path / "catalog.yml"
        catalog.write_text("models: {}\n")
        data["plan"]["inputs"]["catalog"].append({"file": str(catalog), "digest": "sha256:0"})
        plan_file.write_text(json.dumps(data))
    run = play("-i", inventory, REPO / "playbooks/site.yml", "-e", f"gpufleet_plan_file={plan_file}")
    assert run.returncode != 0
    assert "plan_inputs_changed" in run.stdout and f"the {change}" in run.stdout, run.stdout
    assert "node-0" not in run.stdout.split("PLAY RECAP")[1], "a host was touched"
    # the CLI refuses the same plan file before any play runs
    assert main(["apply", "-i", str(inventory), "--plan", str(plan_file), "--yes"]) == 2


def test_site_without_a_strategy_touches_nothing(tmp_path):
    inventory = templated_inventory(tmp_path / "inv")
    run = play("-i", inventory, REPO / "playbooks/site.yml")
    assert run.returncode != 0
    assert "no strategy given" in run.stdout
    recap = run.stdout.split("PLAY RECAP")[1]
    assert "localhost" in recap and "node-" not in recap


def test_ray_play_needs_no_strategy(tmp_path):
    """The nodes the ray role reads come from the inventory alone."""
    inventory = templated_inventory(tmp_path / "inv")
    run = play("-i", inventory, REPO / "playbooks/nodes.yml", "-v")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 nodes read from the inventory" in run.stdout
    listed = play("-i", inventory, REPO / "playbooks/ray.yml", "--list-tasks")
    assert listed.returncode == 0 and "Plan the strategy" not in listed.stdout


def test_the_play_refuses_what_the_cli_refuses(tmp_path):
    """A duplicate key in group_vars (Ansible alone would keep the last one with a warning)."""
    inventory = templated_inventory(tmp_path / "inv")
    group_vars = inventory / "group_vars/all.yml"
    group_vars.write_text(group_vars.read_text() + "gpufleet_node_ip: 127.0.0.9\n")
    assert main(["plan", "-i", str(inventory), "-s", "cxr-worker"]) == 2
    run = play("-i", inventory, REPO / "playbooks/site.yml", "-e", "strategy=cxr-worker")
    assert run.returncode != 0 and "[duplicate_key]" in run.stdout and str(group_vars) in run.stdout, run.stdout
    assert "node-" not in run.stdout.split("PLAY RECAP")[1]


def test_a_catalog_overlay_of_engine_defaults_reaches_the_engine_arguments(tmp_path):
    """The planner sizes with the catalog it was given, and the plan hands the engines the same values."""
    overlay = tmp_path / "site.yml"
    overlay.write_text("engines:\n  vllm: {max_num_seqs: 64, max_num_batched_tokens: 4096}\n"
                       "  ollama: {num_parallel: 2}\n")
    plan = json.loads(subprocess.run(
        [BIN / "gpufleet", "plan", "-i", REPO / "inventory/production", "-s", "ollama-sidecar-spread",
         "--catalog", overlay, "--format", "json"], env=ENV, capture_output=True, text=True, check=True).stdout)
    vllm = [s["engine_args"] for s in plan["services"] if s["engine"] == "vllm"]
    ollama = [s["engine_args"] for s in plan["services"] if s["engine"] == "ollama"]
    assert vllm and all(a["max_num_seqs"] == 64 and a["max_num_batched_tokens"] == 4096 for a in vllm), vllm
    assert ollama and all(a["num_parallel"] == 2 for a in ollama), ollama


def test_a_partial_inventory_stops_the_play_too(tmp_path):
    inventory = templated_inventory(tmp_path / "inv")
    (inventory / "extra.ini").write_text("[ray_workers\nnode-3 ansible_host=127.0.0.5\n")
    run = play("-i", inventory, REPO / "playbooks/site.yml", "-e", "strategy=cxr-worker")
    assert run.returncode != 0 and "extra.ini" in run.stdout + run.stderr
    assert "PLAY RECAP" not in run.stdout, "a play ran on a partial inventory"


def test_a_plan_that_does_not_fit_is_not_written(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "-i", str(REPO / "inventory/production"), "-s", "colocate-4b-util093", "--out", str(out)]) == 3
    assert not out.exists() and f"{out} was not written" in capsys.readouterr().err
