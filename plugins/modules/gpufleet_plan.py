# Documentation for the gpufleet_plan action plugin (plugins/action/gpufleet_plan.py),
# which does all the work on the controller; this file only describes its interface.
from __future__ import annotations

DOCUMENTATION = r"""
module: gpufleet_plan
short_description: Plan a gpufleet strategy against the inventory, before any host is touched
description:
  - Runs the gpufleet planner on the controller with the inventory of this run
    (groups C(ray_head) and C(ray_workers) and their C(gpufleet_*) variables).
  - Fails with the planner's own verdicts (code, service, GPU, field, message, fix)
    when the strategy is not feasible or its files are invalid.
  - On success publishes the plan (docs/CONTRACTS.md) as the fact C(gpufleet_plan).
options:
  strategy:
    description: Name of the strategy file (without C(.yml)).
    type: str
    required: true
  strategies_dir:
    description: Folder holding the strategy files; the project's C(strategies/) when omitted.
    type: str
  catalog_files:
    description: Extra model catalog files merged over the built-in catalog.
    type: list
    elements: str
    default: []
author:
  - gpufleet maintainers
"""

EXAMPLES = r"""
- name: Plan the strategy
  gpufleet_plan:
    strategy: dedicated-node0
"""

RETURN = r"""
ansible_facts:
  description: The plan, as C(gpufleet_plan).
  returned: success
  type: dict
errors:
  description: The planner's errors when the strategy is not feasible.
  returned: failure
  type: list
"""
