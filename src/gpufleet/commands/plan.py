"""plan, strategies, render, schema: the planner's answer and its input schemas, touching no host."""
from __future__ import annotations

import json
import sys

from ..errors import InputError
from .common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    INPUT_FINDINGS,
    check_output_file,
    plan_exit_status,
    plan_from_args,
    print_failures,
)


def cmd_plan(args) -> int:
    from ..plan_table import format_table

    if args.svg:
        check_output_file(args.svg, "--svg")
    if args.out:
        check_output_file(args.out, "--out")
    data = plan_from_args(args, args.strategy)
    if args.out and data["feasible"]:
        from ..api import write_plan_file
        write_plan_file(data, args.out)
    if args.svg:
        from ..svg import render_svg
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
        if args.out:
            print(f"gpufleet: {args.out} was not written: only a plan that fits can be applied", file=sys.stderr)
    return status


def cmd_strategies(args) -> int:
    from ..catalog import load_catalog
    from ..inventory import load_cluster
    from ..planner import plan
    from ..strategy import list_strategies, load_strategy

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


def cmd_render(args) -> int:
    """The Serve module and config, every node's Ray unit and every Ollama unit, rendered by the
    roles' own templates from the plan this command shows (playbooks/render.yml, localhost only)."""
    import tempfile
    from pathlib import Path

    from ..api import write_plan_file
    from ..content import playbook
    from ..runner import run_playbook

    data = plan_from_args(args, args.strategy)
    if not data["feasible"]:
        from ..plan_table import format_table
        print(format_table(data), file=sys.stderr)
        return plan_exit_status(data)
    output = Path(args.output or Path("build") / "render" / args.strategy).resolve()
    with tempfile.TemporaryDirectory(prefix="gpufleet-plan-") as folder:
        plan_file = str(Path(folder) / "plan.json")
        write_plan_file(data, plan_file)
        result = run_playbook(playbook("render.yml"), args.inventory, action="render", quiet_progress=True,
                              extravars={"gpufleet_plan_file": plan_file, "gpufleet_render_dir": str(output)})
    if not result.ok:
        print_failures(result)
        return EXIT_FAILED
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        print(path)
    return EXIT_OK


def cmd_schema(args) -> int:
    """The JSON Schema of a strategy or catalog file (gpufleet.schema: the validators' own tables)."""
    from ..schema import text

    sys.stdout.write(text(args.kind))
    return EXIT_OK
