# Formatting filters between the plan (docs/CONTRACTS.md) and the roles' templates, so that
# templates hold no logic. Placement and memory decisions stay in the gpufleet planner.
from __future__ import annotations

import os
import re

from ansible.errors import AnsibleFilterError

from gpufleet import endpoint_key as _endpoint_key
from gpufleet import nvidia_smi as _nvidia_smi
from gpufleet import ollama_unit as _ollama_unit
from gpufleet import serve_config as _serve_config
from gpufleet import transition as _transition

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words that systemd reads back unchanged without quotes (no quote, backslash, space, specifier
# or variable); everything else is quoted.
_PLAIN_WORD_RE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _systemd_escape(value: str, dollar: bool) -> str:
    out = []
    for char in value:
        if char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        elif char == "%":
            out.append("%%")
        elif char == "$" and dollar:
            out.append("$$")
        else:
            out.append(char)
    return "".join(out)


def systemd_quote(value) -> str:
    """One ExecStart= argument, so that the process gets exactly `value` as one argv word.

    systemd (systemd.service(5), "Command lines") splits ExecStart= on whitespace, honours
    double quotes, C-unescapes backslash sequences, expands specifiers (`%%` is a literal `%`)
    and, when the process starts, variables (`$$` is a literal `$`). Plain words stay unquoted so
    that units whose values need no quoting keep their bytes.
    """
    value = str(value)
    if _PLAIN_WORD_RE.fullmatch(value):
        return value
    return '"' + _systemd_escape(value, dollar=True) + '"'


def systemd_executable(path) -> str:
    """The command of an ExecStart=/ExecStop= line: an absolute path, quoted when needed.

    systemd refuses quotes and backslashes in it ("Executable name contains special
    characters") and does not expand variables in it, so those are refused here; `%` is escaped."""
    path = str(path)
    if (not path.startswith("/") or any(c in path for c in '"\\$')
            or any(ord(c) < 32 or ord(c) == 127 for c in path)):
        raise AnsibleFilterError(f"executable {path!r}: systemd needs an absolute path without quotes, "
                                 "backslashes, $ or control characters")
    if _PLAIN_WORD_RE.fullmatch(path):
        return path
    return '"' + _systemd_escape(path, dollar=False) + '"'


def systemd_environment(name, value) -> str:
    """One Environment= assignment, quoted: `"NAME=value"`.

    systemd C-unescapes and expands specifiers in Environment= (systemd.exec(5)) but does not
    expand variables there, so `$` is written as it is."""
    name = str(name)
    if not ENV_NAME_RE.fullmatch(name):
        raise AnsibleFilterError(f"environment variable name {name!r} is not [A-Za-z_][A-Za-z0-9_]*")
    return '"' + _systemd_escape(f"{name}={value}", dollar=False) + '"'


def ray_labels(labels: dict) -> str:
    """Node labels as `ray start --labels` takes them: k=v,k=v (sorted, so the unit is stable)."""
    for key, value in labels.items():
        for part in (str(key), str(value)):
            if any(c in part for c in ",= \t\n"):
                raise AnsibleFilterError(f"label {key}={value} holds a separator; labels are [A-Za-z0-9_./-]")
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def serve_config(plan: dict, options: dict | None = None) -> dict:
    """Serve declarative config for the plan (gpufleet.serve_config.build_serve_config)."""
    try:
        return _serve_config.build_serve_config(plan, options)
    except _serve_config.ServeConfigError as exc:
        raise AnsibleFilterError(str(exc)) from None


def serve_transition(plan: dict, record_text: str = "", last_good_text: str = "", status_text: str = "",
                     options: dict | None = None) -> dict:
    """The steps from what runs to the plan (gpufleet.transition.plan_transition): the applied record
    (applied.json on the head), the last good Serve config and `serve status` as read on the head."""
    import json

    import yaml

    def loaded(text, load):
        try:
            value = load(text) if text and str(text).strip() else None
        except (ValueError, yaml.YAMLError):
            return None
        return value if isinstance(value, dict) else None

    record = loaded(record_text, json.loads) or {}
    deployed = loaded(last_good_text, yaml.safe_load)
    status = loaded(status_text, yaml.safe_load)
    running = list((status or {}).get("applications") or {}) if status is not None else None
    try:
        return _transition.plan_transition(record.get("plan"), plan, options, deployed=deployed, running=running)
    except _serve_config.ServeConfigError as exc:
        raise AnsibleFilterError(str(exc)) from None


def nvidia_smi(text: str, fields: str = _nvidia_smi.IDENTITY) -> list:
    """nvidia-smi's CSV rows as dicts (gpufleet.nvidia_smi: the one reader)."""
    try:
        return _nvidia_smi.parse(text, fields)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


def ollama_units(plan: dict, host: str, gpus: list | None = None, unit_prefix: str = "gpufleet-ollama-") -> list:
    """The plan's Ollama services that run on `host`, one systemd unit each.

    CUDA_VISIBLE_DEVICES lists GPU UUIDs when preflight read them (`gpus`, as the gpufleet_nvidia_smi filter
    returns), otherwise the planned indices.
    """
    uuid_by_index = {g["index"]: g["uuid"] for g in gpus or []}
    units = []
    for service in plan.get("services") or []:
        ollama = service.get("ollama")
        if service.get("engine") != "ollama" or not ollama or ollama.get("host") != host:
            continue
        indices = list(ollama.get("gpus") or [])
        missing = [i for i in indices if uuid_by_index and i not in uuid_by_index]
        if missing:
            raise AnsibleFilterError(f"service {service['name']}: GPU {missing} planned on {host} "
                                     f"but nvidia-smi lists {sorted(uuid_by_index)}")
        devices = [uuid_by_index.get(i, str(i)) for i in indices]
        listen = ollama.get("listen")
        if not listen:
            raise AnsibleFilterError(f"service {service['name']}: the plan gives no ollama.listen; plan it again")
        try:
            environment = _ollama_unit.environment(service)
        except _ollama_unit.OllamaUnitError as exc:
            raise AnsibleFilterError(str(exc)) from None
        environment.update({"OLLAMA_HOST": listen, "CUDA_VISIBLE_DEVICES": ",".join(devices) if devices else "-1"})
        if ollama.get("spread"):
            environment["OLLAMA_SCHED_SPREAD"] = "1"
        units.append({
            "service": service["name"],
            "unit": f"{unit_prefix}{service['name']}.service",
            "tag": ollama["tag"],
            "listen": listen,
            "environment": environment,
        })
    return units


def serve_health(status_text: str, expected_apps: list) -> dict:
    """Verdict on `serve status` output: ready (every expected application RUNNING, every
    deployment HEALTHY, no other application left), failed (an application or deployment in a
    terminal failure state) and Serve's own messages for the report."""
    import yaml

    status = yaml.safe_load(status_text or "") or {}
    if not isinstance(status, dict):
        status = {}
    apps = status.get("applications") or {}
    messages, ready, failed = [], True, False
    for name in sorted(set(apps) | set(expected_apps)):
        app = apps.get(name)
        if app is None:
            ready = False
            messages.append(f"application {name}: not deployed yet")
            continue
        app_status = app.get("status")
        if name not in expected_apps or app_status != "RUNNING":
            ready = False
        if app_status == "DEPLOY_FAILED":
            failed = True
        if app.get("message") or app_status != "RUNNING":
            messages.append(f"application {name}: {app_status}: {app.get('message') or ''}".rstrip(": "))
        for dep_name, dep in sorted((app.get("deployments") or {}).items()):
            dep_status = dep.get("status")
            if dep_status != "HEALTHY":
                ready = False
                messages.append(f"deployment {name}/{dep_name}: {dep_status}: {dep.get('message') or ''}".rstrip(": "))
            if dep_status == "DEPLOY_FAILED":
                failed = True
    return {"ready": ready, "failed": failed, "messages": messages}


def api_key_file(inventory_sources, inventory_dir=None) -> str:
    """Where the controller keeps the endpoint's generated API key, from `ansible_inventory_sources`.

    With several sources (molecule adds its own inventory beside the project's), the key belongs to
    the one that defines the host: INVENTORY_DIR (the host's `inventory_dir`) or the file in it."""
    sources = [inventory_sources] if isinstance(inventory_sources, str) else list(inventory_sources or [])
    if len(sources) > 1 and inventory_dir:
        home = os.path.realpath(str(inventory_dir))
        sources = [s for s in sources if home in (os.path.realpath(s), os.path.dirname(os.path.realpath(s)))]
    if len(sources) != 1:
        raise AnsibleFilterError(f"the generated API key belongs to one inventory, got {sources!r}: "
                                 "pass one -i or set serve_api_key yourself")
    return str(_endpoint_key.key_file(sources[0]))


class FilterModule:
    def filters(self):
        return {
            "gpufleet_ray_labels": ray_labels,
            "gpufleet_serve_config": serve_config,
            "gpufleet_nvidia_smi": nvidia_smi,
            "gpufleet_ollama_units": ollama_units,
            "gpufleet_serve_health": serve_health,
            "gpufleet_serve_transition": serve_transition,
            "gpufleet_systemd_quote": systemd_quote,
            "gpufleet_systemd_executable": systemd_executable,
            "gpufleet_systemd_environment": systemd_environment,
            "gpufleet_api_key_file": api_key_file,
        }
