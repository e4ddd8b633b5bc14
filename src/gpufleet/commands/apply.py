"""apply and rollback: make the cluster run a plan (ansible-runner over playbooks/site.yml)."""
from __future__ import annotations

import sys

from ..errors import InputError
from .common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    check_inventory,
    confirm,
    keep_runs,
    parse_extra_vars,
    plan_exit_status,
    plan_from_args,
    print_failures,
    read_head,
)


def _endpoint(plan: dict, stats: dict) -> str:
    serve = stats.get("gpufleet_serve") or {}
    if serve.get("endpoint"):
        return serve["endpoint"]
    from ..serve_config import endpoint
    return endpoint(plan) or "(no head in the plan)"


def _key_usage(inventory: str, plan: dict) -> str:
    from .. import endpoint_key

    if any(w["code"] == "endpoint_open" for w in plan["warnings"]):
        return "open: no API key (serve_auth: open)"
    if endpoint_key.key_file(inventory).is_file():
        return endpoint_key.usage(inventory)
    return "clients send the inventory's serve_api_key as 'Authorization: Bearer <key>'"


def _chosen_plan(args) -> dict:
    """The plan this apply runs: a plan file made earlier (checked against today's inputs) or a new one."""
    if getattr(args, "plan", None):
        from ..api import read_plan_file
        from ..inventory import load_cluster

        data = read_plan_file(args.plan, load_cluster(args.inventory))
        args.strategy = data["strategy"]
        return data
    return plan_from_args(args, args.strategy)


def _show_changes(args, data: dict, rollback_from: dict | None) -> None:
    from .. import record
    from ..diff import diff_plans, format_diff

    current = record.read_current(args.inventory)
    change = diff_plans(current["plan"] if current else None, data)
    source = f"cached record of {current['applied_at']}" if current else "no applied record on this controller"
    print(f"changes against the applied strategy ({source}):")
    print(format_diff(change))
    if rollback_from is not None and rollback_from.get("plan") != data:
        print(f"note: strategy {args.strategy!r} plans differently now than when it was applied "
              f"({rollback_from.get('applied_at')}); applying the plan above")
    if current and not change["changed"]:
        print("the strategy is already applied: the run converges any drift")
    print()


def _refused_confirmation(args) -> bool:
    if args.check or args.yes:
        return False
    answer = confirm(f"apply strategy {args.strategy} to {args.inventory}?")
    if answer is None:
        print("gpufleet: error: not applying without confirmation: stdin is not a terminal; "
              "pass --yes to apply non-interactively (or --check for a dry run)", file=sys.stderr)
    elif not answer:
        print("not applied", file=sys.stderr)
    return not answer


def _show_result(args, data: dict, result) -> None:
    from ..runner import format_host_summary

    print()
    print(f"{'checked' if args.check else 'applied' if result.ok else 'FAILED'}: strategy {args.strategy} "
          f"on {args.inventory} (ansible rc {result.rc}, {result.status})")
    print("\n".join(format_host_summary(result)))
    if not result.ok:
        print_failures(result)
    serve = result.stats_data.get("gpufleet_serve") or {}
    for name, app in sorted((serve.get("applications") or {}).items()):
        app = app if isinstance(app, dict) else {"status": app}
        print(f"  serve app {name}: {app.get('status')}")
        for dname, dstatus in sorted((app.get("deployments") or {}).items()):
            print(f"    {dname}: {dstatus.get('status') if isinstance(dstatus, dict) else dstatus}")
    if result.ok and not args.check:
        print(f"endpoint: {_endpoint(data, result.stats_data)}")
        print(f"  {_key_usage(args.inventory, data)}")
    if result.artifact_dir:
        print(f"run artifacts: {result.artifact_dir}")


def _cache_record(args, result) -> None:
    """The controller keeps exactly the record the play wrote on the head (one writer)."""
    from .. import record

    if args.limit:
        print("note: --limit run: the controller's applied record is left as it was")
        return
    published = result.stats_data.get("gpufleet_applied_record")
    if published:
        record.save_applied(args.inventory, published)
    else:
        print("note: the playbook published no applied record (it does not import playbooks/record.yml); "
              "the controller's cache is left as it was")


def cmd_apply(args, rollback_from: dict | None = None) -> int:
    import tempfile
    from pathlib import Path

    from ..api import write_plan_file
    from ..plan_table import format_table
    from ..runner import SITE_PLAYBOOK, run_playbook

    check_inventory(args.inventory)
    user_vars = parse_extra_vars(args.extra_vars)
    playbook = Path(args.playbook) if args.playbook else SITE_PLAYBOOK
    if not playbook.is_file():
        raise InputError("missing_file", str(playbook), "--playbook", "no such playbook",
                         "playbooks/site.yml comes with the project; --playbook must name an existing file")
    keep = keep_runs()

    data = _chosen_plan(args)
    if not data["feasible"]:
        print(format_table(data), file=sys.stderr)
        print(f"\ngpufleet: strategy {args.strategy!r} does not fit {args.inventory}; nothing was run",
              file=sys.stderr)
        return plan_exit_status(data)  # 2 when a finding is invalid_field, else 3
    for w in data["warnings"]:
        print(f"warning: [{w['code']}] {w['message']}", file=sys.stderr)
    _show_changes(args, data, rollback_from)
    if _refused_confirmation(args):
        return EXIT_BAD_INPUT

    # The plan shown above is the plan that runs: the plan play loads it instead of planning again.
    with tempfile.TemporaryDirectory(prefix="gpufleet-plan-") as folder:
        plan_file = str(Path(folder) / "plan.json")
        write_plan_file(data, plan_file)
        result = run_playbook(playbook, args.inventory, action="apply", extravars={"gpufleet_plan_file": plan_file},
                              user_extravars=user_vars, limit=args.limit, check=args.check, keep=keep,
                              summary={"strategy": args.strategy, "rollback": rollback_from is not None})
    _show_result(args, data, result)
    if not result.ok:
        return EXIT_FAILED
    if not args.check:
        _cache_record(args, result)
    return EXIT_OK


def cmd_rollback(args) -> int:
    import os

    from .. import record

    check_inventory(args.inventory)
    previous = record.read_previous(args.inventory)
    if previous is None:
        result = read_head(args.inventory, "record", "rollback-read",
                            user_vars=parse_extra_vars(args.extra_vars))
        if result.ok:
            _, previous = record.records_from_stats(result.stats_data)
    if previous is None:
        print("gpufleet: error: nothing to roll back to: no previously applied strategy is recorded "
              "(on this controller or on the head)", file=sys.stderr)
        return EXIT_BAD_INPUT
    strategies_dir = previous.get("strategies_dir")
    if strategies_dir and not os.path.isdir(strategies_dir):
        raise InputError("missing_file", strategies_dir, "strategies_dir",
                         f"the folder strategy {previous['strategy']!r} was applied from is gone",
                         f"restore it, or apply by hand: gpufleet apply -s {previous['strategy']} --strategies-dir DIR")
    print(f"rolling back to strategy {previous['strategy']} (applied {previous.get('applied_at')})")
    args.strategy, args.strategies_dir = previous["strategy"], strategies_dir
    return cmd_apply(args, rollback_from=previous)
