# The plan as Prometheus metrics for the monitoring role's textfile (gpufleet.plan_metrics owns the
# format and copies the plan's figures; the template only writes the string).
from __future__ import annotations

from gpufleet import plan_metrics as _plan_metrics


def plan_metrics(plan: dict) -> str:
    return _plan_metrics.textfile(dict(plan))


class FilterModule:
    def filters(self):
        return {"gpufleet_plan_metrics": plan_metrics}
