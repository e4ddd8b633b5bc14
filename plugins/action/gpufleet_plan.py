# Thin adapter between Ansible and the gpufleet planner: it hands the planner the inventory
# as this run sees it (the same reader as the CLI's) and formats the planner's verdicts. No
# placement or memory logic lives here.
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from gpufleet import api as _api
    from gpufleet.errors import Finding, InputError
    from gpufleet.inventory import cluster_from_hostvars, inventory_source, planner_hostvars
    from gpufleet.plan_data import nodes_to_list
    from gpufleet.strategy import list_strategies
    from gpufleet.yamlfile import check_inventory
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(f"the gpufleet Python package is not importable by this Ansible ({exc}); "
                      "install it into the Python that runs ansible-playbook: pip install gpufleet") from exc

NO_STRATEGY_FIX = ("name one: -e strategy=NAME (or -e gpufleet_plan_file=FILE from `gpufleet plan --out`); "
                   "a playbook never picks a strategy for you")


def _finding_text(item: dict) -> str:
    """The planner's own wording for one verdict (errors and warnings share the shape)."""
    return str(Finding(code=item.get("code") or "", message=item.get("message") or "", fix=item.get("fix") or "",
                       service=item.get("service"), gpu=item.get("gpu"), field=item.get("field")))


class ActionModule(ActionBase):
    """Publish the inventory's nodes as gpufleet_nodes and, given a strategy or a plan file,
    the plan as gpufleet_plan."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("strategy", "strategies_dir", "catalog_files", "plan_file", "require_plan", "out"))
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        _, args = self.validate_argument_spec(
            argument_spec={
                "strategy": {"type": "str", "default": None},
                "strategies_dir": {"type": "str", "default": None},
                "catalog_files": {"type": "list", "elements": "str", "default": []},
                "plan_file": {"type": "str", "default": None},
                "require_plan": {"type": "bool", "default": True},
                "out": {"type": "str", "default": None},
            }
        )
        sources = task_vars.get("ansible_inventory_sources") or ["inventory"]
        source = inventory_source(sources[0]) if len(sources) == 1 else ",".join(sources)
        groups = {name: list(hosts) for name, hosts in task_vars.get("groups", {}).items()}
        try:
            for inventory in sources:  # the same file checks as the CLI's reader (gpufleet.inventory)
                check_inventory(inventory)
            cluster = cluster_from_hostvars(groups, planner_hostvars(groups, task_vars.get("hostvars", {})), source)
            if args["plan_file"]:
                plan = _api.read_plan_file(args["plan_file"], cluster)
                if args["strategy"] and args["strategy"] != plan["strategy"]:
                    raise AnsibleActionFail(f"strategy {args['strategy']!r} was given with a plan file of strategy "
                                            f"{plan['strategy']!r} ({args['plan_file']}); give one or the other")
            elif args["strategy"]:
                plan = _api.make_plan(cluster, args["strategy"], args["strategies_dir"] or None,
                                      list(args["catalog_files"]))
            elif args["require_plan"]:
                known = ", ".join(list_strategies(args["strategies_dir"] or None))
                raise AnsibleActionFail(f"no strategy given (strategies: {known}); nothing was touched.\n"
                                        f"fix: {NO_STRATEGY_FIX}")
            else:
                result.update(changed=False, msg=f"{len(cluster.nodes)} nodes read from the inventory",
                              ansible_facts={"gpufleet_nodes": nodes_to_list(cluster)})
                return result
        except InputError as exc:
            raise AnsibleActionFail(f"gpufleet cannot plan:\n{exc}") from None

        warnings = [_finding_text(w) for w in plan.get("warnings") or []]
        if warnings:
            result["warnings"] = warnings
        if not plan.get("feasible", False):
            errors = [_finding_text(e) for e in plan.get("errors") or []]
            result.update(
                failed=True,
                msg=f"strategy {plan.get('strategy', args['strategy'])!r} is not feasible; nothing was touched:\n"
                + "\n".join(errors),
                errors=plan.get("errors") or [],
            )
            return result
        if args["out"]:
            try:
                _api.write_plan_file(plan, args["out"])
            except InputError as exc:
                raise AnsibleActionFail(str(exc)) from None

        result.update(
            changed=False,
            msg=f"strategy {plan['strategy']!r} is feasible: {len(plan.get('services') or [])} services "
            f"on {len(plan.get('nodes') or [])} nodes"
            + (f" (plan file {args['plan_file']})" if args["plan_file"] else ""),
            ansible_facts={"gpufleet_plan": plan, "gpufleet_nodes": plan["nodes"]},
        )
        return result
