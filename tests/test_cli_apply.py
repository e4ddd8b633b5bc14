"""`gpufleet apply/status/diff/rollback` end to end.

Loopback tests: real ansible-runner runs against 127.0.0.1 (`ansible_connection: local`), with
strategies and playbooks written into tmp_path. `--playbook` points apply at a small playbook
that imports the real playbooks/record.yml, so the record is written by the project's play (into
a temporary folder given with -e gpufleet_record_dir).

Sandbox tests (marker `sandbox`, run with `pytest -m sandbox`): the real site.yml on the podman
sandbox cluster (inventory/sandbox). They fail, not skip, when selected and the sandbox or
site.yml is missing.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet import endpoint_key, record
from gpufleet.cli import main
from gpufleet.serve_config import llm_deployments

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: {name}
description: one small chat model on the loopback head (vLLM on the CPU)
services:
  - name: chat
    model: HuggingFaceTB/SmolLM2-135M-Instruct
    engine: vllm
    engine_args: {{dtype: bfloat16, max_model_len: {max_model_len}, gpu_memory_utilization: 0.3, enforce_eager: true}}
    replicas: 1
    placement:
      label_selector: {{gpufleet.io/host: loop-head}}
    route: {{model_name: smollm2}}
"""

# The tiny "site": one converge task, Serve status reported the way the serve role reports it,
# then the project's own record play.
SITE = f"""\
- name: Converge the loopback head
  hosts: ray_head
  gather_facts: false
  tasks:
    - name: Converge
      ansible.builtin.command: "true"
    - name: Report the Serve applications
      ansible.builtin.set_stats:
        data: {{gpufleet_serve: {{applications: {{gpufleet: {{status: RUNNING}}}}}}}}
        per_host: false
- name: Record what is applied
  ansible.builtin.import_playbook: {ROOT / "playbooks" / "record.yml"}
"""

FAILING_SITE = """\
- name: Converge the loopback head
  hosts: ray_head
  gather_facts: false
  tasks:
    - name: Install something that is not there
      ansible.builtin.command: ls /nonexistent-gpufleet-path
    - name: Never reached
      ansible.builtin.debug: {msg: unreachable}
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A loopback inventory, strategies, playbooks, and cache/runs folders under tmp_path."""
    monkeypatch.setenv("GPUFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPUFLEET_RUNS_DIR", str(tmp_path / "runs"))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(f"""\
all:
  vars:
    gpufleet_gpus: {{count: 0}}
    gpufleet_cpu_memory_mib: 8192
  children:
    ray_head:
      hosts:
        loop-head: {{ansible_host: 127.0.0.1, ansible_connection: local, ansible_python_interpreter: {sys.executable}}}
""")
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    (strategies / "tiny.yml").write_text(TINY.format(name="tiny", max_model_len=512))
    (strategies / "tiny-long.yml").write_text(TINY.format(name="tiny-long", max_model_len=1024))
    shutil.copy(ROOT / "strategies" / "split-tp3.yml", strategies / "split-tp3.yml")
    (tmp_path / "site.yml").write_text(SITE)
    (tmp_path / "failing.yml").write_text(FAILING_SITE)

    class Env:
        path = tmp_path
        runs = tmp_path / "runs"
        head_dir = tmp_path / "head-etc"

        def args(self, command, strategy=None, playbook="site.yml", *extra):
            argv = [command, "-i", str(inventory)]
            if command in ("apply", "diff"):
                argv += ["--strategies-dir", str(strategies), "-s", strategy]
            if command in ("apply", "rollback"):
                argv += ["--playbook", str(tmp_path / playbook), "-e", f"gpufleet_record_dir={self.head_dir}"]
            return argv + list(extra)

    Env.inventory = str(inventory)
    return Env()


def test_infeasible_strategy_is_refused_before_anything_runs(env, capsys):
    rc = main(env.args("apply", "split-tp3", "site.yml", "--yes"))
    err = capsys.readouterr().err
    assert rc == 2  # split-tp3 also has an invalid_field (a GGUF build under vLLM): exit 2, as for plan
    assert "tp_not_divisor" in err and "nothing was run" in err
    assert not env.runs.exists()  # no runner was started: not even a runs folder
    assert not env.head_dir.exists()


def test_no_confirmation_without_a_terminal(env, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    rc = main(env.args("apply", "tiny"))
    err = capsys.readouterr().err
    assert rc == 2 and "pass --yes" in err
    assert not env.runs.exists()


def test_bad_extra_vars_are_bad_input(env, capsys):
    assert main(env.args("apply", "tiny", "site.yml", "--yes", "-e", "no-equals-sign")) == 2
    assert main(env.args("apply", "tiny", "site.yml", "--yes", "-e", "strategy=other")) == 2
    assert not env.runs.exists()


def test_failing_play_exits_1_with_the_module_message(env, capsys):
    rc = main(env.args("apply", "tiny", "failing.yml", "--yes"))
    out, err = capsys.readouterr()
    assert rc == 1
    assert "TASK Install something that is not there\n    FAILED: loop-head:" in out
    assert "No such file or directory" in out
    assert "Never reached" not in out
    assert "FAILED: strategy tiny" in out and "failed=1" in out
    assert record.read_current(env.inventory) is None  # a failed run records nothing
    assert len(list(env.runs.iterdir())) == 1


def test_apply_records_and_rollback(env, capsys):
    rc = main(env.args("apply", "tiny", "site.yml", "--yes", "-e", "ray_auth_token=SECRET123"))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(nothing applied) -> tiny: changes" in out
    assert "PLAY Converge the loopback head [ray_head]" in out and "changed: loop-head" in out
    assert "applied: strategy tiny" in out and "loop-head                ok" in out
    assert "serve app gpufleet: RUNNING" in out
    assert "endpoint: http://127.0.0.1:8000/v1" in out
    head = json.loads((env.head_dir / "applied.json").read_text())
    assert head["strategy"] == "tiny" and head["plan"]["services"][0]["name"] == "chat"
    assert record.read_current(env.inventory)["strategy"] == "tiny"

    assert main(env.args("apply", "tiny-long", "site.yml", "--yes")) == 0
    out = capsys.readouterr().out
    assert "tiny -> tiny-long: changes" in out and "max_model_len 512 -> 1024" in out
    assert record.read_previous(env.inventory)["strategy"] == "tiny"
    assert json.loads((env.head_dir / "applied-previous.json").read_text())["strategy"] == "tiny"

    # diff --offline: from the controller's cache, no run at all
    runs_before = sorted(p.name for p in env.runs.iterdir())
    assert main(env.args("diff", "tiny", None, "--offline")) == 0
    out = capsys.readouterr().out
    assert "applied record: controller cache" in out and "tiny-long -> tiny: changes" in out
    assert sorted(p.name for p in env.runs.iterdir()) == runs_before

    assert main(env.args("rollback", None, "site.yml", "--yes")) == 0
    out = capsys.readouterr().out
    assert "rolling back to strategy tiny" in out and "applied: strategy tiny on" in out
    assert record.read_current(env.inventory)["strategy"] == "tiny"
    assert record.read_previous(env.inventory)["strategy"] == "tiny-long"

    for path in env.path.rglob("*"):
        if path.is_file():
            assert b"SECRET123" not in path.read_bytes(), path


def test_check_mode_records_nothing(env, capsys):
    assert main(env.args("apply", "tiny", "site.yml", "--check")) == 0
    out = capsys.readouterr().out
    assert "checked: strategy tiny" in out
    assert record.read_current(env.inventory) is None
    assert not (env.head_dir / "applied.json").exists()


def test_status_reads_loopback_without_ray(env, capsys):
    """status.yml on a host without a Ray venv: the play succeeds and says what it could not read."""
    rc = main(["status", "-i", env.inventory, "--format", "json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert data["applied"] is None and data["nodes"] is None
    assert any("no Ray venv" in e for e in data["errors"])
    assert "loop-head" in data["hosts"]


def test_rollback_without_history_is_bad_input(env, capsys):
    env.head_dir.mkdir()
    rc = main(env.args("rollback", None, "site.yml", "--yes", "-e", "gpufleet_record_dir=" + str(env.head_dir)))
    assert rc == 2 and "nothing to roll back to" in capsys.readouterr().err


# --- the sandbox cluster -----------------------------------------------------------------------------



def sandbox_load():
    """Two clients sending chat, streaming and embeddings through the sandbox endpoint (bench/load.py)."""
    spec = importlib.util.spec_from_file_location("load", Path(__file__).resolve().parents[1] / "bench/load.py")
    load = importlib.util.module_from_spec(spec)
    sys.modules["load"] = load  # dataclasses look their module up
    spec.loader.exec_module(load)
    return load.Background("http://10.89.0.10:8000/v1", {"chat": "smollm2", "embed": "minilm"},
                           mix="chat=2,stream=1,embed=1", concurrency=2,
                           api_key=endpoint_key.read_key(str(ROOT / "inventory" / "sandbox")))


RAY_PLAY = "Run Ray on every node"


def ray_tasks_run() -> dict:
    """host -> the tasks of the Ray play that ran on it (ok or changed), from the newest apply's events
    (read with bench/apply_profile.py)."""
    spec = importlib.util.spec_from_file_location("apply_profile", ROOT / "bench" / "apply_profile.py")
    apply_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(apply_profile)
    ran: dict = {}
    for event in apply_profile.events(apply_profile.latest("apply")):
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and data.get("play") == RAY_PLAY:
            ran.setdefault(data["host"], set()).add(data["task"])
    return ran


@pytest.mark.sandbox
def test_sandbox_apply_status_diff_rollback(sandbox, capsys):
    """apply, status, diff, then the switch to sandbox-swapped and the rollback to sandbox, each under
    load (two clients): the transition is make-before-break (gpufleet.transition), so no request fails."""
    assert main(["apply", "-i", sandbox, "-s", "sandbox", "--yes"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "applied: strategy sandbox" in out and "endpoint: http://10.89.0.10:8000/v1" in out

    assert main(["status", "-i", sandbox, "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["applied"]["strategy"] == "sandbox"
    alive = {n["labels"].get("gpufleet.io/host") for n in status["nodes"] if n["state"] == "ALIVE"}
    assert alive == {"sandbox-head", "sandbox-worker-1", "sandbox-worker-2"}
    deployments = {name: dep for name, (_, dep) in llm_deployments(status["applications"]).items()}
    assert {r["host"] for r in deployments["chat"]["replicas"]} == {"sandbox-worker-1"}
    assert {r["host"] for r in deployments["embed"]["replicas"]} == {"sandbox-worker-2"}
    assert status["drift"] == []

    assert main(["diff", "-i", sandbox, "-s", "sandbox-swapped"]) == 0
    out = capsys.readouterr().out
    assert "applied record: head" in out and "sandbox -> sandbox-swapped: changes" in out
    assert "chat" in out and "moved" in out
    assert "transition: hitless" in out, out

    with sandbox_load() as switch:
        assert main(["apply", "-i", sandbox, "-s", "sandbox-swapped", "--yes"]) == 0
    # to stderr: what the test prints to stdout would come back in the next capsys.readouterr().out
    print(capsys.readouterr().out[-3000:], file=sys.stderr)
    print("sandbox -> sandbox-swapped under load:", {k: switch.summary[k] for k in (
        "requests", "failed", "failures_by_cause", "longest_stall_s", "elapsed_s")}, file=sys.stderr)
    assert switch.summary["requests"] > 20 and switch.summary["failed"] == 0, switch.summary
    # The switch changed no Ray input: every node checked its note and ended the Ray play there
    # (roles/ray/tasks/unchanged.yml); none reached the unit's task.
    ran = ray_tasks_run()
    assert set(ran) == set(SANDBOX_NODES), ran
    assert all("Ask whether the Ray unit is active" in tasks and "Install the Ray unit" not in tasks
               for tasks in ran.values()), ran
    assert main(["status", "-i", sandbox, "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    deployments = {name: dep for name, (_, dep) in llm_deployments(status["applications"]).items()}
    assert {r["host"] for r in deployments["chat"]["replicas"]} == {"sandbox-worker-2"}
    assert status["drift"] == []

    # A node file the Ray role wrote, removed by hand (a model folder's shipped note): that node runs the
    # whole role and writes it again; the others end early.
    shipped = "/var/lib/gpufleet/models/all-minilm-l6-v2/.gpufleet-shipped"
    subprocess.run(["podman", "exec", "sandbox-worker-2", "rm", shipped], check=True)
    with sandbox_load() as back:
        assert main(["rollback", "-i", sandbox, "--yes"]) == 0
    ran = ray_tasks_run()
    assert {host for host, tasks in ran.items() if "Install the Ray unit" in tasks} == {"sandbox-worker-2"}, ran
    assert subprocess.run(["podman", "exec", "sandbox-worker-2", "test", "-s", shipped]).returncode == 0
    out = capsys.readouterr().out
    print("sandbox-swapped -> sandbox under load:", {k: back.summary[k] for k in (
        "requests", "failed", "failures_by_cause", "longest_stall_s", "elapsed_s")}, file=sys.stderr)
    assert "rolling back to strategy sandbox" in out
    assert back.summary["requests"] > 20 and back.summary["failed"] == 0, back.summary
    assert main(["status", "-i", sandbox, "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["applied"]["strategy"] == "sandbox" and status["drift"] == []


SANDBOX_NODES = ("sandbox-head", "sandbox-worker-1", "sandbox-worker-2")
# Where a node keeps what gpufleet wrote: the record and the files kept beside it, Ray's config
# (the token file is the one place the Ray token belongs), the Serve folder, the units.
NODE_FILES = ("/etc/gpufleet", "/opt/gpufleet/serve", "/etc/systemd/system")
TOKEN_FILE = "/etc/gpufleet/ray/auth_token"


def files_holding(folder: Path, secrets: list[str]) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]


@pytest.mark.sandbox
def test_sandbox_secrets_stay_where_they_belong(sandbox):
    """After the applies above: the endpoint's API key and the Ray token (both made on the controller)
    are in no run artifact and no controller record, nowhere on a node but the Ray token file, and in
    no process's command line. The searches find the token file, so they can find a leak."""
    from gpufleet.runner import default_runs_dir

    api_key = endpoint_key.key_file(sandbox).read_text().strip()
    token = (record.cache_root() / "ray-auth-token").read_text().strip()
    secrets = [api_key, token]
    assert len(api_key) >= 32 and len(token) >= 32

    runs = default_runs_dir()
    assert any(runs.iterdir()), f"no run artifacts in {runs}"
    assert files_holding(runs, secrets) == []
    assert files_holding(record.applied_dir(sandbox), secrets) == []
    assert subprocess.run(["git", "grep", "-lF", "-e", api_key, "-e", token], cwd=ROOT).returncode == 1

    for node in SANDBOX_NODES:
        # The secrets go to grep on stdin, never on a command line.
        found = subprocess.run(["podman", "exec", "-i", node, "grep", "-rlF", "-f", "-", *NODE_FILES],
                               input="\n".join(secrets) + "\n", capture_output=True, text=True)
        assert found.stdout.split() == [TOKEN_FILE], (node, found.stdout, found.stderr)
        api_key_found = subprocess.run(["podman", "exec", "-i", node, "grep", "-rlF", "-f", "-", *NODE_FILES],
                                       input=api_key + "\n", capture_output=True, text=True)
        assert api_key_found.returncode == 1 and api_key_found.stdout == "", (node, api_key_found.stdout)
        processes = subprocess.run(["podman", "exec", node, "ps", "-eww", "-o", "args="],
                                   capture_output=True, text=True, check=True).stdout
        assert "raylet" in processes, processes[:2000]
        assert not any(secret in processes for secret in secrets), node


@pytest.mark.sandbox
def test_sandbox_failing_play(sandbox, tmp_path, capsys):
    """A play that fails on purpose on a real sandbox node: exit 1, the module's message, no record change."""
    playbook = tmp_path / "fail.yml"
    playbook.write_text("""\
- name: Fail on a worker
  hosts: sandbox-worker-1
  gather_facts: false
  tasks:
    - name: Read a file that is not there
      ansible.builtin.command: cat /nonexistent-gpufleet-path
""")
    before = record.read_current(sandbox)
    assert main(["apply", "-i", sandbox, "-s", "sandbox", "--yes", "--playbook", str(playbook)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: sandbox-worker-1:" in out and "No such file or directory" in out
    assert record.read_current(sandbox) == before


def test_drift_from_status_data():
    """build_status on what status.yml publishes: misplaced replica, missing label, dead node, memory."""
    from gpufleet.status import build_status

    plan = {"strategy": "s", "nodes": [
                {"host": "h0", "group": "head", "labels": {"gpufleet.io/host": "h0", "gpufleet.io/group": "head"}},
                {"host": "h1", "group": "worker", "labels": {"gpufleet.io/host": "h1", "gpufleet.io/pool": "a"}},
                {"host": "h2", "group": "worker", "labels": {"gpufleet.io/host": "h2"}}],
            "services": [{"name": "chat", "engine": "vllm", "replicas": {"min": 1},
                          "placements": [{"replica": 0, "host": "h1", "devices": [0]}]}],
            "gpus": [{"host": "h1", "index": 0, "kind": "gpu", "memory_mib": 23028, "planned_mib": 10000}]}
    stats = {
        "gpufleet_cluster": {"errors": [], "nodes": [
            {"node_id": "n0", "state": "ALIVE", "labels": {"gpufleet.io/host": "h0", "gpufleet.io/group": "head"}},
            {"node_id": "n1", "state": "ALIVE", "labels": {"gpufleet.io/host": "h1"}},
            {"node_id": "n2", "state": "DEAD", "labels": {"gpufleet.io/host": "h2"}}],
            "serve": {"applications": {"gpufleet": {"status": "RUNNING", "deployments": {
                "LLMServer:chat": {"status": "HEALTHY", "replicas": [
                    {"replica_id": "r1", "state": "RUNNING", "node_id": "n0"}]}}}}}},
        "gpufleet_hosts": {"h1": {"nvidia_smi": True, "gpus": ["0, GPU-1, NVIDIA A10, 23028, 21000"],
                                  "units": ["ray-worker.service loaded active running Ray"]}}}
    data = build_status(stats, {"strategy": "s", "applied_at": "t", "plan": plan})
    codes = {(d["code"], d.get("host")) for d in data["drift"]}
    assert codes == {("label_missing", "h1"), ("node_dead", "h2"), ("replica_misplaced", "h0"),
                     ("memory_above_plan", "h1")}
    assert data["applications"]["gpufleet"]["deployments"]["LLMServer:chat"]["replicas"][0]["host"] == "h0"
