"""gpufleet: plan LLM placements GPU by GPU, then converge the cluster with Ansible."""
from __future__ import annotations

import argparse
import gc
import importlib
import sys

from .commands.common import EXIT_BAD_INPUT
from .errors import InputError

# command -> (module of gpufleet.commands, function): imported when the command runs, so `gpufleet plan`
# loads none of apply's or status's modules (start-up time: BENCHMARKS.md)
COMMANDS = {"plan": ("plan", "cmd_plan"), "strategies": ("plan", "cmd_strategies"), "render": ("plan", "cmd_render"),
            "apply": ("apply", "cmd_apply"), "rollback": ("apply", "cmd_rollback"),
            "status": ("cluster", "cmd_status"), "diff": ("cluster", "cmd_diff"),
            "calibrate": ("cluster", "cmd_calibrate"), "schema": ("plan", "cmd_schema")}
# Commands that run no play: a short process that reads, plans and prints (BENCHMARKS.md, `gpufleet plan`)
QUICK = frozenset({"plan", "strategies", "render", "schema"})

EPILOG = """examples:
  gpufleet plan -i inventory/production -s dedicated-node0
  gpufleet plan -i inventory/production -s split-tp3 --format json
  gpufleet plan -i inventory/production -s baseline --svg baseline.svg
  gpufleet strategies -i inventory/production
  gpufleet apply -i inventory/sandbox -s sandbox
  gpufleet status -i inventory/sandbox
  gpufleet diff -i inventory/sandbox -s sandbox-swapped
  gpufleet rollback -i inventory/sandbox
  gpufleet schema strategy > strategy.schema.json

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
    schema = commands.add_parser("schema", help="print the JSON Schema of strategy files or catalog files",
                                 epilog="example: gpufleet schema strategy > strategy.schema.json")
    schema.add_argument("kind", choices=("strategy", "catalog"))
    _add_cluster_commands(commands)
    return parser


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # As the program (no argv: the console script, python -m gpufleet), a command that runs no play keeps
    # the cyclic collector off: Ansible's and gpufleet's imports create some 200,000 objects that live
    # until the process ends, and the collector would walk them again and again, and once more at exit
    # (frozen below, they are skipped then). A fifth of `gpufleet plan`'s time; calls in process
    # (argv given, as the tests do) are left alone.
    quick = argv is None and args.command in QUICK and gc.isenabled()
    if quick:
        gc.disable()
    module, function = COMMANDS[args.command]
    run = getattr(importlib.import_module(f".commands.{module}", __package__), function)
    try:
        return run(args)
    except InputError as exc:
        # keys and names from the input are shown escaped: a control sequence never reaches the terminal
        text = "\n".join(line if line.isprintable() else repr(line)[1:-1] for line in str(exc).split("\n"))
        print(f"gpufleet: error: {text}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if quick:
            gc.freeze()
            gc.enable()


if __name__ == "__main__":
    sys.exit(main())
