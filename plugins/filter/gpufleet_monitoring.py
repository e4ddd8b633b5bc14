# The plan as Prometheus metrics for the monitoring role's textfile (gpufleet.plan_metrics owns the
# format and copies the plan's figures; the template only writes the string).
from __future__ import annotations

from gpufleet import plan_metrics as _plan_metrics


def plan_metrics(plan: dict) -> str:
    return _plan_metrics.textfile(dict(plan))


def targets(plan: dict, port: int, gpus_only: bool = False) -> list:
    """Prometheus static_configs for an exporter on every plan node (or every node with GPUs) at
    its plan address, labelled with the inventory host."""
    return [{"targets": [f"{node['address']}:{int(port)}"], "labels": {"host": node["host"]}}
            for node in plan.get("nodes") or []
            if not gpus_only or int(node.get("num_gpus") or 0) > 0]


class FilterModule:
    def filters(self):
        return {"gpufleet_plan_metrics": plan_metrics, "gpufleet_monitoring_targets": targets}
