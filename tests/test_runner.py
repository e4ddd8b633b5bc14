"""gpufleet.runner against a loopback inventory: real ansible-runner runs of tiny playbooks on 127.0.0.1.

Every host here is this machine through `ansible_connection: local`; nothing leaves loopback.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from gpufleet.runner import REDACTED, Scrubber, is_secret_name, run_playbook


def write_inventory(tmp_path: Path, hosts=("loop-head",)) -> Path:
    lines = ["all:", "  vars:", "    gpufleet_gpus: {count: 0}", "    gpufleet_cpu_memory_mib: 8192",
             "  children:", "    ray_head:", "      hosts:"]
    python = sys.executable
    for index, host in enumerate(hosts[:1]):
        lines.append(f"        {host}: {{ansible_host: 127.0.0.{index + 1}, ansible_connection: local, "
                     f"ansible_python_interpreter: {python}}}")
    if len(hosts) > 1:
        lines += ["    ray_workers:", "      hosts:"]
        for index, host in enumerate(hosts[1:], start=2):
            lines.append(f"        {host}: {{ansible_host: 127.0.0.{index}, ansible_connection: local, "
                         f"ansible_python_interpreter: {python}}}")
    path = tmp_path / "inventory.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_playbook(tmp_path: Path, name: str, tasks: str) -> Path:
    path = tmp_path / name
    path.write_text("- name: Test play\n  hosts: all\n  gather_facts: false\n  tasks:\n" + tasks)
    return path


LEAKY_TASKS = """\
    - name: Print the token without no_log
      ansible.builtin.debug:
        msg: "token={{ ray_auth_token }} hf={{ lookup('ansible.builtin.env', 'HF_TOKEN') }}"
    - name: Echo the token through a command
      ansible.builtin.command: echo {{ ray_auth_token }}
      changed_when: false
    - name: Fail quoting the token
      ansible.builtin.fail:
        msg: "refused {{ ray_auth_token }} and {{ lookup('ansible.builtin.env', 'HF_TOKEN') }}"
"""


def test_secret_names():
    assert is_secret_name("ray_auth_token") and is_secret_name("HF_TOKEN") and is_secret_name("OPENAI_API_KEY")
    assert is_secret_name("vault_password") and is_secret_name("AWS_SECRET_ACCESS_KEY")
    assert not is_secret_name("RAY_AUTH_TOKEN_PATH") and not is_secret_name("RAY_AUTH_MODE")
    assert not is_secret_name("strategy") and not is_secret_name("HOME")


def test_scrubber_nested_values():
    scrub = Scrubber.from_sources({"strategy": "tiny", "ray": {"auth_token": "abcdef123", "port": 6379},
                                   "api_keys": ["k-111111", "k-222222"]}, {"HF_TOKEN": "hf_xyz987", "HOME": "/root"})
    assert scrub.data({"a": ["x abcdef123 y", {"b": "hf_xyz987"}], "c": "k-222222"}) == {
        "a": [f"x {REDACTED} y", {"b": REDACTED}], "c": REDACTED}
    assert scrub.text("tiny /root 6379") == "tiny /root 6379"


def test_failed_play_progress_and_summary(tmp_path):
    inventory = write_inventory(tmp_path)
    playbook = write_playbook(tmp_path, "fail.yml", """\
    - name: A step that works
      ansible.builtin.command: "true"
    - name: A step that fails on purpose
      ansible.builtin.command: ls /nonexistent-gpufleet-path
    - name: Never reached
      ansible.builtin.debug: {msg: unreachable}
""")
    out = io.StringIO()
    result = run_playbook(playbook, str(inventory), action="test", runs_dir=tmp_path / "runs", out=out)
    text = out.getvalue()
    assert not result.ok and result.rc != 0 and result.status == "failed"
    assert "PLAY Test play [all]" in text
    assert "  TASK A step that works\n    changed: loop-head" in text
    assert "  TASK A step that fails on purpose\n    FAILED: loop-head:" in text
    assert "No such file or directory" in text  # the module's own message, as it happened
    assert "Never reached" not in text
    assert result.hosts["loop-head"].failed == 1 and result.hosts["loop-head"].changed == 1
    assert result.failures[0]["task"] == "A step that fails on purpose"
    summary = json.loads((result.artifact_dir / "gpufleet.json").read_text())
    assert summary["status"] == "failed" and summary["failures"][0]["host"] == "loop-head"
    assert (result.artifact_dir / "job_events").is_dir() and (result.artifact_dir / "stdout").is_file()


def test_no_secret_in_run_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "SECRET-HF-4242")
    inventory = write_inventory(tmp_path)
    playbook = write_playbook(tmp_path, "leaky.yml", LEAKY_TASKS)
    runs = tmp_path / "runs"
    out = io.StringIO()
    result = run_playbook(playbook, str(inventory), action="test", extravars={"strategy": "tiny"},
                          user_extravars={"ray_auth_token": "SECRET123"}, runs_dir=runs, out=out)
    assert not result.ok
    # the run really used the secret (the task saw it) ...
    stdout = (result.artifact_dir / "stdout").read_text()
    assert f"token={REDACTED} hf={REDACTED}" in stdout
    # ... and no file of the run holds it, nor does the console
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.parent.name == "job_events" for p in files) and any(p.name == "command" for p in files)
    for path in files:
        assert b"SECRET" not in path.read_bytes(), path
    assert "SECRET" not in out.getvalue() and REDACTED in out.getvalue()
    command = json.loads((result.artifact_dir / "command").read_text())
    assert command["env"]["HF_TOKEN"] == REDACTED
    assert not any("ray_auth_token" in arg for arg in command["command"])  # -e values went through a file


def test_runs_dir_keeps_the_last_n(tmp_path):
    inventory = write_inventory(tmp_path)
    playbook = write_playbook(tmp_path, "ok.yml", "    - name: Nothing\n      ansible.builtin.debug: {msg: hi}\n")
    runs = tmp_path / "runs"
    seen = []
    for _ in range(4):
        result = run_playbook(playbook, str(inventory), action="test", runs_dir=runs, keep=2, out=io.StringIO())
        assert result.ok
        seen.append(result.artifact_dir.name)
    assert sorted(p.name for p in runs.iterdir()) == sorted(seen[-2:])
