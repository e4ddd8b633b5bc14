"""What the commands share: exit statuses, input checks, the head's record, prompts."""
from __future__ import annotations

import sys

from ..errors import InputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3
# Planner findings that say the input itself is wrong, whatever the cluster (README: exit 2).
# One code means one thing: invalid_field exits 2 whether the schema or the planner found it.
INPUT_FINDINGS = frozenset({"invalid_field"})


def plan_exit_status(data: dict) -> int:
    """0 fits, 2 a finding says the input is wrong, 3 it does not fit."""
    codes = {e["code"] for e in data.get("errors") or ()}
    return EXIT_BAD_INPUT if codes & INPUT_FINDINGS else EXIT_INFEASIBLE if codes else EXIT_OK


def check_output_file(path: str, option: str) -> None:
    """Refuse an output path that cannot be written before anything is planned (no traceback later)."""
    import os

    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise InputError("unwritable_file", path, option, "is a folder", f"give a file name, for example {option} "
                         + os.path.join(path, "plan.svg" if option == "--svg" else "plan.json"))
    if not os.path.isdir(folder):
        raise InputError("unwritable_file", path, option, f"the folder {folder} does not exist",
                         "create the folder first, or write into an existing one")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise InputError("unwritable_file", path, option, "is not writable", "pick a writable location")


def plan_from_args(args, strategy: str):
    from ..api import plan_from_inventory

    return plan_from_inventory(args.inventory, strategy, args.strategies_dir, args.catalog)


def parse_extra_vars(items: list) -> dict:
    from .. import yamlfile

    result: dict = {}
    for item in items:
        if item.startswith("@"):
            path = item[1:]
            try:
                data = yamlfile.load_file(path, what="variables file")
            except InputError as exc:  # duplicate keys, alias bombs, binary: refused like any input file
                raise InputError("invalid_extra_vars", path, f"-e {exc.field}",
                                 f"cannot read: [{exc.code}] {exc.message}",
                                 exc.fix or "give a readable YAML or JSON file of variables") from None
            if not isinstance(data, dict):
                raise InputError("invalid_extra_vars", path, "-e", "is not a mapping of variables",
                                 "write KEY: VALUE lines")
            result.update(data)
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not key.strip().isidentifier():
            raise InputError("invalid_extra_vars", "command line", "-e", f"{item!r} is not KEY=VALUE",
                             "write -e name=value (or -e @file.yml)")
        if key.strip() == "strategy":
            raise InputError("invalid_extra_vars", "command line", "-e", "strategy is chosen with -s, not -e",
                             "use -s STRATEGY")
        result[key.strip()] = value
    return result


def check_inventory(path: str) -> None:
    import os

    if not os.path.exists(path):
        raise InputError("missing_file", path, "-i", "no such inventory",
                         "point -i at an inventory folder or file, for example inventory/sandbox")


def keep_runs() -> int:
    import os

    value = os.environ.get("GPUFLEET_KEEP_RUNS", "")
    try:
        return max(int(value), 1) if value else 20
    except ValueError:
        raise InputError("invalid_env", "environment", "GPUFLEET_KEEP_RUNS", f"{value!r} is not a number",
                         "set it to how many runs to keep, for example 20") from None


def read_head(inventory: str, tags: str, action: str, limit: str | None = None, user_vars: dict | None = None):
    """Run playbooks/status.yml quietly (progress to stderr only on failure); the RunResult."""
    from ..content import playbook
    from ..runner import run_playbook

    return run_playbook(playbook("status.yml"), inventory, action=action, tags=tags,
                        limit=limit, keep=keep_runs(), out=sys.stderr, quiet_progress=True,
                        user_extravars=user_vars)


def print_failures(result) -> None:
    for f in result.failures:
        print(f"gpufleet: {f['host']}: {f['task']}: {f['msg']}", file=sys.stderr)
    if not result.hosts and result.output:  # Ansible stopped before any play (syntax, inventory)
        print("\n".join(line.strip() for line in result.output[-10:] if line.strip()), file=sys.stderr)


def confirm(question: str) -> bool | None:
    """True or False from the terminal; None when there is no terminal to ask."""
    if not sys.stdin.isatty():
        return None
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
