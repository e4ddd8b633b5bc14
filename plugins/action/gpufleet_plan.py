# Thin adapter between Ansible and the gpufleet planner: it hands the planner
# the inventory as this run sees it and formats the planner's verdicts. No
# placement or memory logic lives here.
from __future__ import annotations

import sys
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from gpufleet import api as _api
    from gpufleet.errors import Finding, InputError
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from gpufleet import api as _api
    from gpufleet.errors import Finding, InputError

# The inventory variables the planner reads (docs/CONTRACTS.md); nothing else is handed over,
# so unrelated (possibly vaulted or untemplatable) host variables are never evaluated.
_PLANNER_VARS_PREFIX = "gpufleet_"
_PLANNER_EXTRA_VARS = ("ansible_host",)
_RAY_GROUPS = ("ray_head", "ray_workers")


def _finding_text(item: dict) -> str:
    """The planner's own wording for one verdict (errors and warnings share the shape)."""
    return str(Finding(code=item.get("code") or "", message=item.get("message") or "", fix=item.get("fix") or "",
                       service=item.get("service"), gpu=item.get("gpu"), field=item.get("field")))


class ActionModule(ActionBase):
    """Plan a strategy on the controller and publish it as the fact gpufleet_plan."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("strategy", "strategies_dir", "catalog_files"))
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        _, args = self.validate_argument_spec(
            argument_spec={
                "strategy": {"type": "str", "required": True},
                "strategies_dir": {"type": "str", "default": None},
                "catalog_files": {"type": "list", "elements": "str", "default": []},
            }
        )

        groups = {name: list(hosts) for name, hosts in task_vars.get("groups", {}).items()}
        hostvars = self._planner_hostvars(groups, task_vars.get("hostvars", {}))
        try:
            plan = _api.plan_from_hostvars(
                groups,
                hostvars,
                args["strategy"],
                strategies_dir=args["strategies_dir"] or None,
                catalog_files=list(args["catalog_files"]),
            )
        except InputError as exc:
            raise AnsibleActionFail(f"gpufleet cannot plan strategy {args['strategy']!r}:\n{exc}") from None

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

        result.update(
            changed=False,
            msg=f"strategy {plan['strategy']!r} is feasible: {len(plan.get('services') or [])} services "
            f"on {len(plan.get('nodes') or [])} nodes",
            ansible_facts={"gpufleet_plan": plan},
        )
        return result

    def _planner_hostvars(self, groups: dict, hostvars) -> dict:
        hosts = {h for g in _RAY_GROUPS for h in groups.get(g, [])}
        selected = {}
        for host in sorted(hosts):
            if host not in hostvars:
                continue
            host_vars = hostvars[host]
            names = [k for k in host_vars if k.startswith(_PLANNER_VARS_PREFIX) or k in _PLANNER_EXTRA_VARS]
            selected[host] = {name: self._templar.template(host_vars[name]) for name in names}
        return selected
