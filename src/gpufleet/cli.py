"""gpufleet: plan LLM placements GPU by GPU, then converge the cluster with Ansible."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import InputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3

EPILOG = """examples:
  gpufleet plan -i inventory/production -s dedicated-node0
  gpufleet plan -i inventory/production -s split-tp3 --format json
  gpufleet plan -i inventory/production -s baseline --svg baseline.svg
  gpufleet strategies -i inventory/production

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

    strategies = commands.add_parser("strategies", help="list strategies with their verdict on an inventory",
                                     epilog="example: gpufleet strategies -i inventory/production")
    _add_common(strategies)
    return parser


def _plan(args, strategy: str):
    from .catalog import load_catalog
    from .inventory import load_cluster
    from .planner import plan
    from .strategy import load_strategy

    return plan(load_cluster(args.inventory), load_catalog(args.catalog),
                load_strategy(strategy, args.strategies_dir)).to_dict()


def cmd_plan(args) -> int:
    from .report import format_table

    data = _plan(args, args.strategy)
    if args.svg:
        from .svg import render_svg
        with open(args.svg, "w") as handle:
            handle.write(render_svg(data))
    print(json.dumps(data, indent=2) if args.format == "json" else format_table(data))
    return EXIT_OK if data["feasible"] else EXIT_INFEASIBLE


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
            data = plan(cluster, catalog, load_strategy(name, args.strategies_dir)).to_dict()
            verdict = "fits" if data["feasible"] else f"no-fit ({', '.join(sorted({e['code'] for e in data['errors']}))})"
            description = data["description"]
        except InputError as exc:
            verdict, description, status = "invalid", f"{exc.field}: {exc.message}", EXIT_BAD_INPUT
        print(f"{name:{width}}  {verdict:40}  {description}")
    return status


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"plan": cmd_plan, "strategies": cmd_strategies}[args.command](args)
    except InputError as exc:
        print(f"gpufleet: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
