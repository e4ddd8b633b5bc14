"""status, diff, calibrate: read the cluster and compare it with the plan; change nothing."""
from __future__ import annotations

import json
import sys

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    check_inventory,
    check_output_file,
    plan_exit_status,
    plan_from_args,
    print_failures,
    read_head,
)


def cmd_status(args) -> int:
    from .. import record
    from ..status import build_status, format_status, unread_nodes

    check_inventory(args.inventory)
    result = read_head(args.inventory, "record,cluster", "status", limit=args.limit)
    # A node that cannot be read because it is down (Ansible cannot reach it, or Ray itself lists it
    # dead) is drift, not a failed status, as long as the head was read: its play published the
    # cluster. Any other failure is the status play's own and fails the command.
    unread = unread_nodes(result.stats_data, result.failures)
    if not result.ok and ("gpufleet_cluster" not in result.stats_data
                          or not unread or any(f["host"] not in unread for f in result.failures)):
        print_failures(result)
        print(f"gpufleet: the status play failed (run artifacts: {result.artifact_dir})", file=sys.stderr)
        return EXIT_FAILED
    current, _ = record.records_from_stats(result.stats_data)
    if current is not None:
        current = {**current, "source": "head"}
    else:
        current = record.read_current(args.inventory)
        if current is not None:
            current = {**current, "source": "controller cache"}
    data = build_status(result.stats_data, current, unread)
    print(json.dumps(data, indent=2) if args.format == "json" else format_status(data))
    return EXIT_OK


def cmd_diff(args) -> int:
    from .. import record
    from ..diff import diff_plans, format_diff

    check_inventory(args.inventory)
    data = plan_from_args(args, args.strategy)
    if args.offline:
        current, source = record.read_current(args.inventory), "controller cache"
    else:
        result = read_head(args.inventory, "record", "diff")
        if not result.ok:
            print_failures(result)
            print(f"gpufleet: could not read the applied record from the head (run artifacts: "
                  f"{result.artifact_dir}); --offline compares with the controller's cache", file=sys.stderr)
            return EXIT_FAILED
        current, _ = record.records_from_stats(result.stats_data)
        source = "head"
    change = diff_plans(current["plan"] if current else None, data)
    change["applied_source"] = source
    change["applied_at"] = current.get("applied_at") if current else None
    change["feasible"] = data["feasible"]
    if args.format == "json":
        print(json.dumps(change, indent=2))
    else:
        print(f"applied record: {source}" + (f", {current.get('applied_at')}" if current else ": none"))
        print(format_diff(change))
        if not data["feasible"]:
            print(f"\nstrategy {args.strategy!r} does not fit: `gpufleet plan` says why")
    return plan_exit_status(data)


def cmd_calibrate(args) -> int:
    from ..calibrate import run

    check_inventory(args.inventory)
    check_output_file(args.output, "-o")
    return run(args.inventory, args.output, limit=args.limit)
