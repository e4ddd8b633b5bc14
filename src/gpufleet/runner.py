"""Run a playbook through ansible-runner: live progress, a summary, and run artifacts that hold no secret.

Shape after ansible-navigator (`runner/base.py`): `ansible_runner.run(private_data_dir=<tmp>,
project_dir=<repo>, suppress_env_files=True, quiet=True, event_handler=..., cancel_callback=...)`,
progress from `playbook_on_play_start`, `playbook_on_task_start`, `runner_on_*` and
`playbook_on_stats`; environment after Kayobe (`env.setdefault`, so the user's settings win).

Where ansible-runner would keep a secret, and what this module does about it:

- `env/extravars`, `env/envvars`, `env/cmdline` in the private data dir: never written
  (`suppress_env_files=True`, and the private data dir is a temporary folder removed after the run).
- the command line (`artifacts/<id>/command`, and `ps` while it runs): variables given with
  `-e` go into a 0600 file in that temporary folder and reach Ansible as `-e @file`.
- `artifacts/<id>/command` also holds the whole environment (HF_TOKEN, ...): rewritten with
  secret values redacted as soon as the runner reports `running` (before Ansible starts).
- `job_events/*.json` and `stdout`: every event passes through `Scrubber` before it is
  written or printed; `stdout` is rebuilt from the scrubbed events (the runner's own copy
  of Ansible's raw output is turned off). A last pass scrubs every file of the run.
- the runner's `starting` status payload holds the environment: it is never logged.

A secret is any `-e` variable or environment variable whose name says so (`SECRET_NAME_RE`);
tasks should still use `no_log: true`, which keeps the value out of the events in the first place.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import content

PROJECT_DIR = content.root()
SITE_PLAYBOOK = content.playbook("site.yml")
DEFAULT_KEEP_RUNS = 20
REDACTED = "********"

# Names of variables whose values are secrets; *_PATH, *_FILE, *_DIR and *_MODE name where a
# secret lives or how it is used, not the secret itself.
SECRET_NAME_RE = re.compile(r"(token|secret|passw|api_?key|private_?key|credential|vault_pass)", re.I)
NOT_SECRET_SUFFIX_RE = re.compile(r"_(path|file|dir|mode|url|type)$", re.I)
MIN_SECRET_LEN = 4

# Events after which a host's task result is printed, and how.
_RESULT_EVENTS = {
    "runner_on_ok": "ok", "runner_on_failed": "FAILED", "runner_on_unreachable": "UNREACHABLE",
    "runner_on_skipped": "skipped", "runner_item_on_failed": "FAILED",
}


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME_RE.search(name)) and not NOT_SECRET_SUFFIX_RE.search(name)


def default_runs_dir() -> Path:
    if os.environ.get("GPUFLEET_RUNS_DIR"):
        return Path(os.environ["GPUFLEET_RUNS_DIR"]).expanduser()
    cache = os.environ.get("GPUFLEET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gpufleet")
    return Path(cache) / "runs"


def _secret_leaves(name: str, value, inherited: bool = False) -> list:
    """Scalar values under a secret name (at any depth of a nested variable)."""
    secret = inherited or is_secret_name(str(name))
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _secret_leaves(k, v, secret)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _secret_leaves(name, v, secret)]
    if secret and value is not None and not isinstance(value, bool):
        return [str(value)]
    return []


class Scrubber:
    """Replaces known secret values in strings, nested event data and files."""

    def __init__(self, values=()):
        # Longest first, so a secret that contains another is replaced whole.
        self.values = sorted({v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LEN},
                             key=len, reverse=True)

    @classmethod
    def from_sources(cls, extravars: dict, environ: dict) -> Scrubber:
        values = [str(v) for k, v in environ.items() if is_secret_name(k)]
        for name, value in extravars.items():
            values += _secret_leaves(name, value)
        return cls(values)

    def text(self, value: str) -> str:
        for secret in self.values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def data(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value

    def file(self, path: Path) -> None:
        if not self.values or not path.is_file() or path.is_symlink():
            return
        raw = path.read_bytes()
        clean = raw
        for secret in self.values:
            clean = clean.replace(secret.encode(), REDACTED.encode())
            # the same value as it appears inside JSON strings
            escaped = json.dumps(secret)[1:-1].encode()
            if escaped != secret.encode():
                clean = clean.replace(escaped, REDACTED.encode())
        if clean != raw:
            path.write_bytes(clean)

    def tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            self.file(path)


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class RunResult:
    rc: int
    status: str  # successful | failed | canceled | timeout
    artifact_dir: Path | None
    hosts: dict = field(default_factory=dict)  # host -> HostStats
    failures: list = field(default_factory=list)  # {"host", "task", "msg"}
    stats_data: dict = field(default_factory=dict)  # what the plays published with set_stats
    output: list = field(default_factory=list)  # Ansible's output, scrubbed

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"


def _result_message(res: dict) -> str:
    """The module's own message for a failed result, as short as it can honestly be."""
    if not isinstance(res, dict):
        return str(res)
    parts = []
    msg = res.get("msg")
    if msg:
        parts.append(msg if isinstance(msg, str) else json.dumps(msg))
    for key in ("stderr", "stdout", "module_stderr"):
        text = res.get(key)
        if isinstance(text, str) and text.strip() and (not parts or key == "stderr"):
            parts.append(text.strip())
    if res.get("results") and not parts:  # a loop: the first failed item's message
        for item in res["results"]:
            if isinstance(item, dict) and item.get("failed"):
                parts.append(_result_message(item))
                break
    return "\n".join(parts) or "(no message)"


class Progress:
    """Turns runner events into lines: one per play, per task, per host result."""

    def __init__(self, out=None, show_skipped: bool = False, quiet: bool = False):
        self.out = out or sys.stdout
        self.show_skipped = show_skipped
        self.quiet = quiet  # failures only
        self.hosts: dict = {}
        self.failures: list = []
        self.stats_data: dict = {}
        self._task = ""
        self._task_printed = False
        self._pending_task = ""

    def _print(self, line: str, failure: bool = False) -> None:
        if not self.quiet:  # quiet: the caller reports failures itself
            print(line, file=self.out, flush=True)

    def _flush_task(self) -> None:
        if self.quiet:
            return
        if self._pending_task and not self._task_printed:
            self._print(f"  TASK {self._pending_task}")
            self._task_printed = True

    def __call__(self, event: dict) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self._print(f"PLAY {data.get('play') or data.get('name') or '(unnamed)'} "
                        f"[{data.get('play_pattern', '')}]")
        elif kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            self._task = data.get("task") or data.get("name") or data.get("task_action", "")
            self._pending_task = ("HANDLER " if "handler" in kind else "") + self._task
            self._task_printed = False
        elif kind in _RESULT_EVENTS:
            host = data.get("host", "?")
            res = data.get("res") or {}
            label = _RESULT_EVENTS[kind]
            if kind == "runner_on_ok" and res.get("changed"):
                label = "changed"
            if kind == "runner_on_failed" and data.get("ignore_errors"):
                label = "failed (ignored)"
            if label == "skipped" and not self.show_skipped:
                return
            self._flush_task()
            if label in ("FAILED", "UNREACHABLE"):
                message = _result_message(res)
                item = f" (item {data.get('item')!r})" if kind == "runner_item_on_failed" and data.get("item") else ""
                if kind != "runner_item_on_failed":
                    self.failures.append({"host": host, "task": self._task, "msg": message,
                                          "unreachable": label == "UNREACHABLE"})
                indented = message.replace("\n", "\n        ")
                self._print(f"    {label}: {host}{item}: {indented}", failure=True)
            elif kind != "runner_item_on_failed":
                self._print(f"    {label}: {host}")
        elif kind == "playbook_on_stats":
            self.stats_data = data.get("artifact_data") or {}
            for key, attr in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"),
                              ("dark", "unreachable"), ("skipped", "skipped"),
                              ("rescued", "rescued"), ("ignored", "ignored")):
                for host, count in (data.get(key) or {}).items():
                    setattr(self.hosts.setdefault(host, HostStats()), attr, count)
            for host in data.get("processed") or {}:
                self.hosts.setdefault(host, HostStats())
        elif kind == "warning" or (kind == "verbose" and "[WARNING]" in (event.get("stdout") or "")):
            text = (event.get("stdout") or "").strip().splitlines()
            if text:
                self._print(f"  {text[0]}")


def _scrub_command_file(artifact_dir: Path, scrubber: Scrubber) -> None:
    """The runner writes the whole environment into `command`: keep names, redact secret values."""
    path = artifact_dir / "command"
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        path.write_text(scrubber.text(path.read_text(encoding="utf-8")), encoding="utf-8")
        return
    env = data.get("env") or {}
    data["env"] = {k: (REDACTED if is_secret_name(k) else scrubber.text(str(v))) for k, v in env.items()}
    data["command"] = scrubber.data(data.get("command"))
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.chmod(path, 0o600)


def run_ident(action: str, inventory: str) -> str:
    from .record import inventory_name

    slug = inventory_name(inventory)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"
    return f"{stamp}-{os.getpid()}-{action}-{slug}"


def prune_runs(runs_dir: Path, keep: int) -> None:
    """Keep the newest KEEP run folders; their names start with a sortable UTC time."""
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir())
    for old in runs[:max(len(runs) - max(int(keep), 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)


def ansible_environment(extra: dict | None = None) -> dict:
    """Environment additions for Ansible (Kayobe style: the user's own settings win)."""
    env = dict(extra or {})
    env.setdefault("ANSIBLE_CONFIG", os.environ.get("ANSIBLE_CONFIG") or str(PROJECT_DIR / "ansible.cfg"))
    # ansible-runner turns host key checking off unless told otherwise; keep Ansible's default
    # (the project's ansible.cfg accepts a new key but refuses a changed one).
    env.setdefault("ANSIBLE_HOST_KEY_CHECKING", os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"))
    env.setdefault("ANSIBLE_NOCOLOR", os.environ.get("ANSIBLE_NOCOLOR", "1"))
    # ansible-playbook from the same installation as this package, even when its venv is not active.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if "PATH" not in env and not shutil.which("ansible-playbook") and bindir not in path.split(os.pathsep):
        env["PATH"] = os.pathsep.join(p for p in (bindir, path) if p)
    return env


def run_playbook(playbook, inventory: str, *, action: str = "run", extravars: dict | None = None,
                 user_extravars: dict | None = None, limit: str | None = None, check: bool = False,
                 tags: str | None = None, runs_dir=None, keep: int = DEFAULT_KEEP_RUNS, out=None,
                 quiet_progress: bool = False, summary: dict | None = None) -> RunResult:
    """Run PLAYBOOK against INVENTORY; artifacts go to RUNS_DIR/<ident>/, the last KEEP are kept.

    `extravars` are the wrapper's own (strategy name, folders) and appear on the command line;
    `user_extravars` (from `-e`) reach Ansible through a temporary file and never the artifacts.
    """
    import ansible_runner

    extravars = dict(extravars or {})
    user_extravars = dict(user_extravars or {})
    scrubber = Scrubber.from_sources({**user_extravars, **extravars}, dict(os.environ))
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ident = run_ident(action, inventory)
    artifact_dir = runs_dir / ident
    progress = Progress(out=out or sys.stdout, quiet=quiet_progress)
    stdout_lines: list = []

    def on_event(event: dict) -> bool:
        clean = scrubber.data(event)
        event.clear()
        event.update(clean)  # the runner writes this very dict to job_events/
        if event.get("stdout"):
            stdout_lines.append(event["stdout"])
        progress(event)
        return True

    def on_status(status: dict, runner_config=None) -> None:
        # Never log the `starting` payload: it holds the environment.
        if status.get("status") == "running" and runner_config is not None:
            _scrub_command_file(Path(runner_config.artifact_dir), scrubber)

    private = Path(tempfile.mkdtemp(prefix="gpufleet-run-"))
    try:
        os.chmod(private, 0o700)
        (private / "env").mkdir(mode=0o700)
        # Ansible's raw output would bypass the scrubber: `stdout` is rebuilt from the events.
        (private / "env" / "settings").write_text(json.dumps({"suppress_output_file": True}))
        cmdline = []
        if user_extravars:
            vars_file = private / "user-extravars.json"
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(user_extravars, handle)
            cmdline += ["-e", f"@{vars_file}"]
        if check:
            cmdline += ["--check", "--diff"]
        if tags:
            cmdline += ["--tags", tags]
        kwargs = dict(
            private_data_dir=str(private),
            project_dir=str(PROJECT_DIR),
            artifact_dir=str(runs_dir),
            ident=ident,
            playbook=str(Path(playbook).resolve()),
            inventory=str(Path(inventory).resolve()),
            extravars=extravars or None,
            envvars=ansible_environment(),
            suppress_env_files=True,
            quiet=True,
            event_handler=on_event,
            status_handler=on_status,
        )
        if limit:
            kwargs["limit"] = limit
        if cmdline:
            kwargs["cmdline"] = " ".join(_quote(a) for a in cmdline)
        runner = ansible_runner.run(**kwargs)
        rc, status = runner.rc, runner.status
    finally:
        shutil.rmtree(private, ignore_errors=True)

    if artifact_dir.is_dir():
        stdout_path = artifact_dir / "stdout"
        fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(stdout_lines) + ("\n" if stdout_lines else ""))
        _scrub_command_file(artifact_dir, scrubber)
        scrubber.tree(artifact_dir)
    result = RunResult(rc=rc if rc is not None else 1, status=status or "failed",
                       artifact_dir=artifact_dir if artifact_dir.is_dir() else None,
                       hosts=progress.hosts, failures=progress.failures, stats_data=progress.stats_data,
                       output=stdout_lines)
    prune_runs(runs_dir, keep)
    _write_run_summary(result, {"action": action, "playbook": str(playbook), "inventory": str(inventory),
                                "limit": limit, "check": check, "tags": tags, "extravars": extravars,
                                "user_extravars": sorted(user_extravars), **(summary or {})}, scrubber)
    return result


def _quote(arg: str) -> str:
    return shlex.quote(arg)


def format_host_summary(result: RunResult) -> list:
    lines = []
    for host in sorted(result.hosts):
        s = result.hosts[host]
        verdict = "FAILED" if s.failed or s.unreachable else "ok"
        lines.append(f"  {host:24} {verdict:7} ok={s.ok} changed={s.changed} failed={s.failed} "
                     f"unreachable={s.unreachable} skipped={s.skipped}")
    return lines


def _write_run_summary(result: RunResult, summary: dict, scrubber: Scrubber) -> None:
    """A small `gpufleet.json` beside the runner's artifacts: what was asked and how it ended."""
    if result.artifact_dir is None:
        return
    data = scrubber.data({**summary, "rc": result.rc, "status": result.status,
                          "hosts": {h: vars(s) for h, s in result.hosts.items()},
                          "failures": result.failures})
    path = result.artifact_dir / "gpufleet.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, default=str)
