"""gpufleet: plan LLM placements GPU by GPU, then converge the cluster with Ansible."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import InputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3
# Planner findings that say the input itself is wrong, whatever the cluster (README: exit 2).
# One code means one thing: invalid_field exits 2 whether the schema or the planner found it.
INPUT_FINDINGS = frozenset({"invalid_field"})


def plan_exit_status(data: dict) -> int:
    """0 fits, 2 a finding says the input is wrong, 3 it does not fit."""
    codes = {e["code"] for e in data.get("errors") or ()}
    return EXIT_BAD_INPUT if codes & INPUT_FINDINGS else EXIT_INFEASIBLE if codes else EXIT_OK


def _check_output_file(path: str, option: str) -> None:
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

EPILOG = """examples:
  gpufleet plan -i inventory/production -s dedicated-node0
  gpufleet plan -i inventory/production -s split-tp3 --format json
  gpufleet plan -i inventory/production -s baseline --svg baseline.svg
  gpufleet strategies -i inventory/production
  gpufleet apply -i inventory/sandbox -s sandbox
  gpufleet status -i inventory/sandbox
  gpufleet diff -i inventory/sandbox -s sandbox-swapped
  gpufleet rollback -i inventory/sandbox

exit codes: 0 fits (warnings allowed), 1 a play failed, 2 bad input, 3 the plan does not fit
"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--inventory", required=True, help="Ansible inventory (folder or file)")
    parser.add_argument("--strategies-dir", help="folder of strategy files (default: the project's strategies/)")
    parser.add_argument("--catalog", action="append", default=[], metavar="FILE",
                        help="extra model catalog file, entries replace the built-in ones (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpufleet", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = commands.add_parser("plan", help="check GPU by GPU that a strategy fits; touches no host",
                               description="Place every service of STRATEGY on the inventory's GPUs and "
                               "account memory per GPU. Touches no host.",
                               epilog="example: gpufleet plan -i inventory/production -s colocate-4b-util090",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(plan)
    plan.add_argument("-s", "--strategy", required=True, help="strategy name (a file STRATEGY.yml)")
    plan.add_argument("--format", choices=("table", "json"), default="table")
    plan.add_argument("--svg", metavar="FILE", help="also draw the per-GPU memory split into FILE")
    plan.add_argument("--out", metavar="FILE", help="write the plan to FILE for `gpufleet apply --plan FILE` "
                      "(only when it fits; applied only while its inputs are unchanged)")

    strategies = commands.add_parser("strategies", help="list strategies with their verdict on an inventory",
                                     epilog="example: gpufleet strategies -i inventory/production")
    _add_common(strategies)
    render = commands.add_parser("render", help="write every file a strategy would install into a local folder; "
                                 "touches no host", epilog="example: gpufleet render -i inventory/production "
                                 "-s dedicated-node0 -o build/render")
    _add_common(render)
    render.add_argument("-s", "--strategy", required=True, help="strategy name (a file STRATEGY.yml)")
    render.add_argument("-o", "--output", metavar="DIR", default=None,
                        help="folder to render into (default: ./build/render/STRATEGY)")
    _add_cluster_commands(commands)
    return parser


def _plan(args, strategy: str):
    from .api import plan_from_inventory

    return plan_from_inventory(args.inventory, strategy, args.strategies_dir, args.catalog)


def cmd_plan(args) -> int:
    from .plan_table import format_table

    if args.svg:
        _check_output_file(args.svg, "--svg")
    if args.out:
        _check_output_file(args.out, "--out")
    data = _plan(args, args.strategy)
    if args.out and data["feasible"]:
        from .api import write_plan_file
        write_plan_file(data, args.out)
    if args.svg:
        from .svg import render_svg
        try:
            with open(args.svg, "w", encoding="utf-8") as handle:
                handle.write(render_svg(data))
        except OSError as exc:
            raise InputError("unwritable_file", args.svg, "--svg", f"cannot write the drawing: {exc.strerror}",
                             "name a file in an existing, writable folder") from None
    print(json.dumps(data, indent=2) if args.format == "json" else format_table(data))
    status = plan_exit_status(data)
    if status != EXIT_OK:
        strategy_file = ((data.get("inputs") or {}).get("strategy") or {}).get("file") or args.strategy
        print(f"gpufleet: strategy file {strategy_file} "
              + ("has invalid fields (exit 2)" if status == EXIT_BAD_INPUT
                 else f"does not fit {args.inventory} (exit 3)")
              + f": {len(data['errors'])} error(s) above", file=sys.stderr)
    return status


def cmd_strategies(args) -> int:
    from .catalog import load_catalog
    from .inventory import load_cluster
    from .planner import plan
    from .strategy import list_strategies, load_strategy

    cluster, catalog = load_cluster(args.inventory), load_catalog(args.catalog)
    names = list_strategies(args.strategies_dir)
    width = max((len(n) for n in names), default=8)
    status = EXIT_OK
    for name in names:
        try:
            loaded = load_strategy(name, args.strategies_dir)
            data = plan(cluster, catalog, loaded).to_dict()
            codes = ", ".join(sorted({e["code"] for e in data["errors"]}))
            verdict = "fits" if data["feasible"] else f"no-fit ({codes})"
            description = data["description"]
            if plan_exit_status(data) == EXIT_BAD_INPUT:
                bad = next(e for e in data["errors"] if e["code"] in INPUT_FINDINGS)
                verdict, status = f"invalid ({bad['code']})", EXIT_BAD_INPUT
                description = f"{loaded.file}: {bad['field']}: {bad['message']}"
        except InputError as exc:  # one bad file is listed as invalid; the others are still planned
            verdict, description, status = "invalid", f"{exc.file}: {exc.field}: {exc.message}", EXIT_BAD_INPUT
        description = " ".join(description.split())
        # a file name or message with control characters is shown escaped, never sent to the terminal
        shown = [t if t.isprintable() else repr(t)[1:-1] for t in (name, description)]
        print(f"{shown[0]:{width}}  {verdict:40}  {shown[1]}")
    return status


# --- apply, status, diff, rollback: the cluster through ansible-runner ------------------------------

RUNS_HELP = """run artifacts (ansible-runner's job events, a scrubbed stdout, gpufleet.json) go to
$GPUFLEET_RUNS_DIR (default ~/.cache/gpufleet/runs), one folder per run, the last
$GPUFLEET_KEEP_RUNS (default 20) kept; secret values (-e variables and environment
variables named *token*, *secret*, *password*, *api_key*, ...) are replaced by ********.
The applied strategy is cached per inventory in ~/.cache/gpufleet/applied/ ($GPUFLEET_CACHE)."""

APPLY_EPILOG = f"""examples:
  gpufleet apply -i inventory/sandbox -s sandbox
  gpufleet apply -i inventory/production -s dedicated-node0 --check
  gpufleet apply -i inventory/production -s colocate-4b-util090 --yes -e @secrets.yml
  gpufleet apply -i inventory/production -s baseline --limit node-0 -e ray_auth_token=...

Plans STRATEGY first and stops before touching any host when it does not fit (exit 3).
Then shows what changes against the applied strategy, asks for confirmation (unless
--yes or --check), runs playbooks/site.yml -e strategy=STRATEGY and prints progress per
play, task and host, then a summary. After a successful run (not --check, not --limit)
the head keeps the record (/etc/gpufleet/applied.json) and the controller caches it.

exit codes: 0 applied, 1 a play failed, 2 bad input (or no confirmation), 3 the plan does not fit

{RUNS_HELP}
"""

STATUS_EPILOG = f"""examples:
  gpufleet status -i inventory/sandbox
  gpufleet status -i inventory/production --format json | jq .drift

Runs playbooks/status.yml (read-only) on the head and the nodes: Ray nodes with their
labels, Serve applications, deployments and the node of each replica, GPU memory where
nvidia-smi exists, Ray and Ollama units. Then lists the drift against the applied plan:
node_missing, node_dead, label_missing, label_mismatch, app_missing, app_unhealthy,
deployment_unhealthy, service_missing, service_unexpected, replicas_missing,
replica_misplaced, memory_above_plan, ray_unit_inactive, ollama_unit_missing/inactive.

exit codes: 0 read (drift or not), 1 the play failed, 2 bad input

{RUNS_HELP}
"""

DIFF_EPILOG = """examples:
  gpufleet diff -i inventory/sandbox -s sandbox-swapped
  gpufleet diff -i inventory/production -s dedicated-node0 --offline
  gpufleet diff -i inventory/production -s colocate-4b-util093 --format json

Compares the plan of STRATEGY with the applied plan: services added, removed, moved
(placement or selector) or resized (replicas, engine arguments), and memory per GPU
before and after. Reads the applied record from the head (a read-only play), or with
--offline from the controller's cache, touching no host.

exit codes: 0 compared, 1 the record could not be read, 2 bad input, 3 STRATEGY does not fit
"""

ROLLBACK_EPILOG = f"""examples:
  gpufleet rollback -i inventory/sandbox
  gpufleet rollback -i inventory/production --yes -e @secrets.yml

Applies the strategy that was applied before the current one (from the controller's
cache, or else from the head's /etc/gpufleet/applied-previous.json), exactly as
`gpufleet apply -s PREVIOUS` would, with the same plan check, diff and confirmation.
The strategy is planned again from its file: if the file changed since, the diff says so.

exit codes: 0 rolled back, 1 a play failed, 2 bad input or nothing to roll back to, 3 the plan does not fit

{RUNS_HELP}
"""


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="dry run: Ansible's check mode with --diff; records nothing, asks nothing")
    parser.add_argument("--limit", metavar="HOSTS", help="run on these hosts only (Ansible --limit pattern)")
    parser.add_argument("-y", "--yes", action="store_true", help="apply without asking for confirmation")
    parser.add_argument("-e", "--extra-vars", action="append", default=[], metavar="KEY=VALUE",
                        help="extra variable for the playbook, KEY=VALUE or @FILE (yaml/json), repeatable; "
                        "values are kept out of the run artifacts")
    parser.add_argument("--playbook", metavar="FILE",
                        help="run FILE instead of playbooks/site.yml (a site's own playbook that imports it)")


def _add_cluster_commands(commands) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    apply = commands.add_parser("apply", help="plan a strategy, then make the cluster run it (ansible-runner)",
                                description="Apply STRATEGY to the cluster of INVENTORY.",
                                epilog=APPLY_EPILOG, formatter_class=raw)
    _add_common(apply)
    chosen = apply.add_mutually_exclusive_group(required=True)
    chosen.add_argument("-s", "--strategy", help="strategy name (a file STRATEGY.yml)")
    chosen.add_argument("--plan", metavar="FILE", help="apply a plan made by `gpufleet plan --out FILE`; "
                        "refused when the inventory, catalog or strategy changed since")
    _add_run_options(apply)

    status = commands.add_parser("status", help="the live cluster and its drift from the applied plan (read-only)",
                                 description="Show the live cluster of INVENTORY and its drift from the applied plan.",
                                 epilog=STATUS_EPILOG, formatter_class=raw)
    status.add_argument("-i", "--inventory", required=True, help="Ansible inventory (folder or file)")
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.add_argument("--limit", metavar="HOSTS", help="read these hosts only (Ansible --limit pattern)")

    diff = commands.add_parser("diff", help="what applying a strategy would change, service by service and GPU by GPU",
                               description="Compare the plan of STRATEGY with the applied plan of INVENTORY.",
                               epilog=DIFF_EPILOG, formatter_class=raw)
    _add_common(diff)
    diff.add_argument("-s", "--strategy", required=True, help="strategy name (a file STRATEGY.yml)")
    diff.add_argument("--offline", action="store_true",
                      help="compare with the controller's cached record; touch no host")
    diff.add_argument("--format", choices=("table", "json"), default="table")

    rollback = commands.add_parser("rollback", help="apply the strategy applied before the current one",
                                   description="Apply the previously applied strategy of INVENTORY again.",
                                   epilog=ROLLBACK_EPILOG, formatter_class=raw)
    calibrate = commands.add_parser(
        "calibrate", help="write what the running engines showed as a catalog overlay (read-only)",
        description="Read the cluster of INVENTORY (as `status` does) and write the overhead each vLLM engine "
        "showed, per model and device kind, as a catalog file for `plan --catalog FILE`.",
        epilog="example: gpufleet calibrate -i inventory/sandbox -o site-calibration.yml\n\n"
        "exit codes: 0 written, 1 the status play failed, 2 bad input or nothing applied", formatter_class=raw)
    calibrate.add_argument("-i", "--inventory", required=True, help="Ansible inventory (folder or file)")
    calibrate.add_argument("-o", "--output", required=True, metavar="FILE", help="catalog overlay to write")
    calibrate.add_argument("--limit", metavar="HOSTS", help="read these hosts only (Ansible --limit pattern)")

    rollback.add_argument("-i", "--inventory", required=True, help="Ansible inventory (folder or file)")
    rollback.add_argument("--catalog", action="append", default=[], metavar="FILE",
                          help="extra model catalog file, entries replace the built-in ones (repeatable)")
    _add_run_options(rollback)


def _parse_extra_vars(items: list) -> dict:
    from . import yamlfile

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


def _check_inventory(path: str) -> None:
    import os

    if not os.path.exists(path):
        raise InputError("missing_file", path, "-i", "no such inventory",
                         "point -i at an inventory folder or file, for example inventory/sandbox")


def _keep_runs() -> int:
    import os

    value = os.environ.get("GPUFLEET_KEEP_RUNS", "")
    try:
        return max(int(value), 1) if value else 20
    except ValueError:
        raise InputError("invalid_env", "environment", "GPUFLEET_KEEP_RUNS", f"{value!r} is not a number",
                         "set it to how many runs to keep, for example 20") from None


def _read_head(inventory: str, tags: str, action: str, limit: str | None = None, user_vars: dict | None = None):
    """Run playbooks/status.yml quietly (progress to stderr only on failure); the RunResult."""
    from .content import playbook
    from .runner import run_playbook

    return run_playbook(playbook("status.yml"), inventory, action=action, tags=tags,
                        limit=limit, keep=_keep_runs(), out=sys.stderr, quiet_progress=True,
                        user_extravars=user_vars)


def _print_failures(result) -> None:
    for f in result.failures:
        print(f"gpufleet: {f['host']}: {f['task']}: {f['msg']}", file=sys.stderr)
    if not result.hosts and result.output:  # Ansible stopped before any play (syntax, inventory)
        print("\n".join(line.strip() for line in result.output[-10:] if line.strip()), file=sys.stderr)


def _confirm(question: str) -> bool | None:
    """True or False from the terminal; None when there is no terminal to ask."""
    if not sys.stdin.isatty():
        return None
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _endpoint(plan: dict, stats: dict) -> str:
    serve = stats.get("gpufleet_serve") or {}
    if serve.get("endpoint"):
        return serve["endpoint"]
    from .serve_config import endpoint
    return endpoint(plan) or "(no head in the plan)"


def cmd_apply(args, rollback_from: dict | None = None) -> int:
    import tempfile
    from pathlib import Path

    from .api import write_plan_file
    from . import record
    from .diff import diff_plans, format_diff
    from .plan_table import format_table
    from .runner import SITE_PLAYBOOK, format_host_summary, run_playbook

    _check_inventory(args.inventory)
    user_vars = _parse_extra_vars(args.extra_vars)
    playbook = Path(args.playbook) if args.playbook else SITE_PLAYBOOK
    if not playbook.is_file():
        raise InputError("missing_file", str(playbook), "--playbook", "no such playbook",
                         "playbooks/site.yml comes with the project; --playbook must name an existing file")
    keep = _keep_runs()

    if getattr(args, "plan", None):
        from .api import read_plan_file
        from .inventory import load_cluster
        data = read_plan_file(args.plan, load_cluster(args.inventory))
        args.strategy = data["strategy"]
    else:
        data = _plan(args, args.strategy)
    if not data["feasible"]:
        print(format_table(data), file=sys.stderr)
        print(f"\ngpufleet: strategy {args.strategy!r} does not fit {args.inventory}; nothing was run",
              file=sys.stderr)
        return plan_exit_status(data)  # 2 when a finding is invalid_field, else 3
    for w in data["warnings"]:
        print(f"warning: [{w['code']}] {w['message']}", file=sys.stderr)

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

    if not args.check and not args.yes:
        answer = _confirm(f"apply strategy {args.strategy} to {args.inventory}?")
        if answer is None:
            print("gpufleet: error: not applying without confirmation: stdin is not a terminal; "
                  "pass --yes to apply non-interactively (or --check for a dry run)", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not answer:
            print("not applied", file=sys.stderr)
            return EXIT_BAD_INPUT

    # The plan shown above is the plan that runs: the plan play loads it instead of planning again.
    with tempfile.TemporaryDirectory(prefix="gpufleet-plan-") as folder:
        plan_file = str(Path(folder) / "plan.json")
        write_plan_file(data, plan_file)
        result = run_playbook(playbook, args.inventory, action="apply", extravars={"gpufleet_plan_file": plan_file},
                              user_extravars=user_vars, limit=args.limit, check=args.check, keep=keep,
                              summary={"strategy": args.strategy, "rollback": rollback_from is not None})

    print()
    print(f"{'checked' if args.check else 'applied' if result.ok else 'FAILED'}: strategy {args.strategy} "
          f"on {args.inventory} (ansible rc {result.rc}, {result.status})")
    print("\n".join(format_host_summary(result)))
    if not result.ok:
        _print_failures(result)
    serve = result.stats_data.get("gpufleet_serve") or {}
    for name, app in sorted((serve.get("applications") or {}).items()):
        status = app.get("status") if isinstance(app, dict) else app
        print(f"  serve app {name}: {status}")
        for dname, dstatus in sorted(((app.get("deployments") or {}) if isinstance(app, dict) else {}).items()):
            print(f"    {dname}: {dstatus.get('status') if isinstance(dstatus, dict) else dstatus}")
    if result.ok and not args.check:
        print(f"endpoint: {_endpoint(data, result.stats_data)}")
    if result.artifact_dir:
        print(f"run artifacts: {result.artifact_dir}")

    if not result.ok:
        return EXIT_FAILED
    if not args.check:
        if args.limit:
            print("note: --limit run: the controller's applied record is left as it was")
        else:
            published = result.stats_data.get("gpufleet_applied_record")
            if published:
                record.save_applied(args.inventory, published)
            else:
                print("note: the playbook published no applied record (it does not import playbooks/record.yml); "
                      "the controller's cache is left as it was")
    return EXIT_OK


def cmd_status(args) -> int:
    from . import record
    from .status import build_status, format_status

    _check_inventory(args.inventory)
    result = _read_head(args.inventory, "record,cluster", "status", limit=args.limit)
    if not result.ok:
        _print_failures(result)
        print(f"gpufleet: the status play failed (run artifacts: {result.artifact_dir})", file=sys.stderr)
        return EXIT_FAILED
    current, _ = record.records_from_stats(result.stats_data)
    if current is not None:
        current = {**current, "source": "head"}
    else:
        current = record.read_current(args.inventory)
        if current is not None:
            current = {**current, "source": "controller cache"}
    data = build_status(result.stats_data, current)
    print(json.dumps(data, indent=2) if args.format == "json" else format_status(data))
    return EXIT_OK


def cmd_diff(args) -> int:
    from . import record
    from .diff import diff_plans, format_diff

    _check_inventory(args.inventory)
    data = _plan(args, args.strategy)
    if args.offline:
        current, source = record.read_current(args.inventory), "controller cache"
    else:
        result = _read_head(args.inventory, "record", "diff")
        if not result.ok:
            _print_failures(result)
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


def cmd_rollback(args) -> int:
    import os

    from . import record

    _check_inventory(args.inventory)
    previous = record.read_previous(args.inventory)
    if previous is None:
        result = _read_head(args.inventory, "record", "rollback-read",
                            user_vars=_parse_extra_vars(args.extra_vars))
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


def cmd_render(args) -> int:
    """The Serve module and config, every node's Ray unit and every Ollama unit, rendered by the
    roles' own templates from the plan this command shows (playbooks/render.yml, localhost only)."""
    import tempfile
    from pathlib import Path

    from .api import write_plan_file
    from .content import playbook
    from .runner import run_playbook

    data = _plan(args, args.strategy)
    if not data["feasible"]:
        from .plan_table import format_table
        print(format_table(data), file=sys.stderr)
        return plan_exit_status(data)
    output = Path(args.output or Path("build") / "render" / args.strategy).resolve()
    with tempfile.TemporaryDirectory(prefix="gpufleet-plan-") as folder:
        plan_file = str(Path(folder) / "plan.json")
        write_plan_file(data, plan_file)
        result = run_playbook(playbook("render.yml"), args.inventory, action="render", quiet_progress=True,
                              extravars={"gpufleet_plan_file": plan_file, "gpufleet_render_dir": str(output)})
    if not result.ok:
        _print_failures(result)
        return EXIT_FAILED
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        print(path)
    return EXIT_OK


def cmd_calibrate(args) -> int:
    from .calibrate import run

    _check_inventory(args.inventory)
    _check_output_file(args.output, "-o")
    return run(args.inventory, args.output, limit=args.limit)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"plan": cmd_plan, "strategies": cmd_strategies, "apply": cmd_apply, "status": cmd_status,
                "diff": cmd_diff, "rollback": cmd_rollback, "render": cmd_render,
                "calibrate": cmd_calibrate}[args.command](args)
    except InputError as exc:
        # keys and names from the input are shown escaped: a control sequence never reaches the terminal
        text = "\n".join(line if line.isprintable() else repr(line)[1:-1] for line in str(exc).split("\n"))
        print(f"gpufleet: error: {text}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
