"""From the applied plan to a new one without dropping requests: the order in which Serve
applications start, take traffic and stop (make-before-break), decided here and only executed by
the serve role (`gpufleet_serve_transition` filter -> `roles/serve/tasks/deploy.yml`).

Each vLLM service is a Serve application whose name is its code version (gpufleet.serve_config):
an unchanged service keeps its application; a changed one is a new application beside the old.
A transition is a list of steps, each a whole Serve config to deploy and wait for:

- start: a new application whose replicas fit beside everything still running, by the plans'
  figures: each device's planned memory (the plan's allocations against the device's memory) and
  each node's Ray resources (the replica's bundles, plus the one CPU of the replica actor that
  ray.serve.llm merges into bundle 0: `LLMServer.get_deployment_options`,
  ray/llm/_internal/serve/core/server/llm_server.py:800-820; the router's CPUs on the head).
  One application per step, and its old one stops before the next starts: the switch holds at most
  one engine more than the plans do, and engines (those sharing a device included) load one by one;
- route: the router's table (its user_config, applied in place by `reconfigure`) moves a model
  name to its new applications once every one of them is healthy;
- stop: old applications nothing routes to any more. Serve stops their replicas gracefully: a
  replica stops taking requests and waits for those in flight up to the deployment's
  graceful_shutdown_timeout_s (gpufleet.serve_config DEFAULTS drain_timeout_s).

When a new application fits nowhere until an old one stops (not enough memory or Ray resources
for both), the old application of the same node goes first: if its model name has no other running
application, that model is unavailable until the replacement is healthy; if it has, the model runs
on reduced capacity. Both are reported as losses, and the transition is not hitless. Model names
that only the old plan serves are removed last.
"""
from __future__ import annotations

from . import serve_config as sc

# ray.serve.llm adds the replica actor's own CPU to bundle 0 (llm_server.py:800-820; num_cpus default 1)
REPLICA_ACTOR_CPUS = 1.0


def _demand(plan: dict, service_name: str) -> dict:
    """What one service's planned replicas hold: {"nodes": {host: {resource: amount}},
    "devices": {(host, index): mib}}."""
    service = next((s for s in plan.get("services") or [] if s["name"] == service_name), None)
    nodes: dict = {}
    devices: dict = {}
    if service is None:
        return {"nodes": nodes, "devices": devices}
    bundles = (service.get("ray") or {}).get("bundles") or []
    for placement in service.get("placements") or []:
        ask = nodes.setdefault(placement["host"], {})
        for i, bundle in enumerate(bundles):
            for resource, amount in bundle.items():
                ask[resource] = ask.get(resource, 0) + float(amount)
            if i == 0:
                ask["CPU"] = ask.get("CPU", 0) + REPLICA_ACTOR_CPUS
    for device in plan.get("gpus") or []:
        for alloc in device.get("allocations") or []:
            if alloc.get("service") == service_name:
                key = (device["host"], device.get("index", 0))
                devices[key] = devices.get(key, 0) + alloc.get("mib", 0)
    return {"nodes": nodes, "devices": devices}


def _capacity(*plans: dict) -> tuple[dict, dict]:
    """({host: {CPU, GPU}}, {(host, index): memory MiB}) from the plans' nodes and devices; a node
    without gpufleet_cpus has no CPU bound here (Ray counts the machine's)."""
    nodes: dict = {}
    devices: dict = {}
    for plan in plans:
        for node in (plan or {}).get("nodes") or []:
            cap = {"GPU": float(node.get("num_gpus") or 0)}
            if node.get("num_cpus") is not None:
                cap["CPU"] = float(node["num_cpus"])
            nodes.setdefault(node["host"], cap)
        for device in (plan or {}).get("gpus") or []:
            devices.setdefault((device["host"], device.get("index", 0)), device.get("memory_mib") or 0)
    return nodes, devices


class _Cluster:
    def __init__(self, nodes: dict, devices: dict, fixed: dict):
        self.nodes, self.devices, self.fixed = nodes, devices, fixed

    def fits(self, demands: list) -> bool:
        used_nodes: dict = {h: dict(a) for h, a in self.fixed.items()}
        used_devices: dict = {}
        for demand in demands:
            for host, ask in demand["nodes"].items():
                node = used_nodes.setdefault(host, {})
                for resource, amount in ask.items():
                    node[resource] = node.get(resource, 0) + amount
            for key, mib in demand["devices"].items():
                used_devices[key] = used_devices.get(key, 0) + mib
        for host, used in used_nodes.items():
            cap = self.nodes.get(host, {})
            for resource, amount in used.items():
                if resource in cap and amount > cap[resource] + 1e-9:
                    return False
        return all(mib <= self.devices.get(key, mib) for key, mib in used_devices.items())


def plan_transition(before: dict | None, after: dict, options: dict | None = None,
                    deployed: dict | None = None, running: list | None = None) -> dict:
    """The steps from `before` (the applied plan, or None) to `after`.

    deployed: the Serve config in force (the serve role's last good one), whose application names
    are what runs; else the config `before` renders with these options. running: the application
    names Serve runs now (`serve status`), when known: a before application that does not run holds
    nothing and is not waited for.

    Returns {"hitless", "losses": [{"model", "service", "effect", "step"}], "steps": [{"kind",
    "apps", "config", "expected_apps", "summary"}], "from_apps", "to_apps"}; the last step's config
    is `after`'s whole config.
    """
    options = dict(options or {})
    router = sc._options(options)["app_name"]
    target = sc.build_serve_config(after, options)
    if deployed is None and before:
        deployed = sc.build_serve_config(before, options) if before.get("feasible") else None
    deployed = deployed or {"applications": []}
    old_apps = {a["name"]: a for a in deployed.get("applications") or [] if sc.service_of_app(a["name"], router)}
    if running is not None:
        old_apps = {n: a for n, a in old_apps.items() if n in set(running)}
    new_apps = {a["name"]: a for a in target["applications"] if sc.service_of_app(a["name"], router)}
    old_router = next((a for a in deployed.get("applications") or [] if a["name"] == router), None)

    cap_wait_s = sc._options(options)["loaded_cap_wait_s"]
    old_table = sc.routes(list(old_apps.values()), before or {}, router, cap_wait_s)
    new_table = sc.routes(list(new_apps.values()), after, router, cap_wait_s)

    def members(table: dict) -> dict:
        return {m["app"]: (model, m) for model, ms in table["models"].items() for m in ms}

    member = {**members(old_table), **members(new_table)}
    # Every step's router keeps the cap on loaded models: the target's, else (switching away from a
    # capped strategy) the deployed one's, over the on-demand models each step routes.
    old_on_demand, new_on_demand = old_table.get("on_demand") or {}, new_table.get("on_demand") or {}
    if old_router:  # the deployed router's own entries (weights as deployed)
        for model, ms in ((old_router["deployments"][0].get("user_config") or {}).get("models") or {}).items():
            for m in ms:
                if m["app"] in old_apps:
                    member[m["app"]] = (model, m)
    model_of = {name: member[name][0] for name in {**old_apps, **new_apps}}
    service_of = {name: sc.service_of_app(name, router) for name in {**old_apps, **new_apps}}
    demand = {name: _demand(before or {}, service_of[name]) for name in old_apps}
    demand.update({name: _demand(after, service_of[name]) for name in new_apps})
    nodes, devices = _capacity(after, before or {})
    head = next((n["host"] for n in after.get("nodes") or [] if n.get("group") == "head"), None)
    ingress_cpus = float(sc._options(options)["ingress_num_cpus"])
    cluster = _Cluster(nodes, devices, {head: {"CPU": ingress_cpus}} if head else {})

    new_models = {model_of[n] for n in new_apps}
    running_apps = list(old_apps)  # in start order
    routes = {}
    for name in old_apps:
        routes.setdefault(model_of[name], []).append(name)
    pending = [n for n in new_apps if n not in old_apps]
    steps: list = []
    losses: list = []

    def app(name: str) -> dict:
        return new_apps.get(name) or old_apps[name]

    def emit(kind: str, names: list, summary: str) -> None:
        table = {"models": {model: [member[n][1] for n in apps] for model, apps in sorted(routes.items()) if apps}}
        lazy = {model: (new_on_demand if model in new_models else old_on_demand).get("models", {}).get(model)
                for model in table["models"]}
        lazy = {model: idle for model, idle in lazy.items() if idle is not None}
        if lazy:
            table["on_demand"] = {**(new_on_demand or old_on_demand), "models": lazy}
        apps = [app(n) for n in running_apps]
        config = sc.deploy_config([sc.router_app(table, options), *apps] if apps else [], options)
        steps.append({"kind": kind, "apps": list(names), "summary": summary, "config": config,
                      "expected_apps": [a["name"] for a in config["applications"]]})

    def route_ready() -> None:
        changed = []
        for model in sorted(new_models):
            up = [n for n in new_apps if model_of[n] == model and n in running_apps]
            want = [n for n in new_apps if model_of[n] == model]
            if set(up) == set(want) and routes.get(model) != want:
                routes[model] = want
                changed.append(model)
        if changed:
            emit("route", changed, "route " + ", ".join(changed) + " to its new applications")

    def stop_unrouted(final: bool = False) -> None:
        routed = {n for apps in routes.values() for n in apps}
        gone = [n for n in running_apps if n not in new_apps and n not in routed
                and (final or model_of[n] in new_models)]
        if gone:
            running_apps[:] = [n for n in running_apps if n not in gone]
            emit("stop", gone, "stop " + ", ".join(service_of[n] for n in gone) + " (old)")

    while True:
        # One new application per step, moved all the way (start, route, stop the old one) before
        # the next starts: the switch holds at most one engine more than either plan, and engines
        # never load together (on a shared device each would size its memory from what it finds
        # free: vLLM's profile run counts a neighbour's allocations, vllm#9198).
        started = [name for name in pending
                   if cluster.fits([demand[n] for n in running_apps] + [demand[name]])][:1]
        if started:
            pending = [n for n in pending if n not in started]
            running_apps += started
            emit("start", started, "start " + ", ".join(service_of[n] for n in started) + " beside the running ones")
        route_ready()
        before_stop = len(steps)
        stop_unrouted()
        if not pending:
            break
        if started or len(steps) > before_stop:
            continue
        # Nothing fits beside what runs: an old application on a node the first waiting one needs goes first.
        waiting = pending[0]
        hosts = set(demand[waiting]["nodes"]) | {h for h, _ in demand[waiting]["devices"]}
        olds = [n for n in running_apps if n not in new_apps]
        on_hosts = [n for n in olds if hosts & (set(demand[n]["nodes"]) | {h for h, _ in demand[n]["devices"]})]
        candidates = on_hosts or olds
        if not candidates:  # nothing old left to stop: start the rest and let Ray place what it can
            running_apps += pending
            emit("start", pending, "start " + ", ".join(service_of[n] for n in pending) + " (does not fit beside "
                 "the running applications by the plan's figures)")
            pending = []
            route_ready()
            break
        # prefer a victim whose model keeps another running application
        candidates.sort(key=lambda n: not [o for o in routes.get(model_of[n], []) if o != n and o in running_apps])
        victim = candidates[0]
        model = model_of[victim]
        others = [o for o in routes.get(model, []) if o != victim and o in running_apps]
        effect = "reduced" if others else "unavailable"
        losses.append({"model": model, "service": service_of[victim], "effect": effect, "step": len(steps),
                       "until": "its new application is healthy" if model in new_models else "removed"})
        # Requests for the model go to what else serves it; with nothing else, to its new applications,
        # whose handles hold them until a replica runs (or the client gives up).
        routes[model] = others or [n for n in new_apps if model_of[n] == model]
        emit("route", [model],
             f"route {model} away from {service_of[victim]} ({effect} until its replacement is healthy)")
        running_apps.remove(victim)
        emit("stop", [victim], f"stop {service_of[victim]} (old) to make room")

    # Model names only the old plan serves: removed last.
    for model in sorted(m for m in list(routes) if m not in new_models):
        routes.pop(model)
    stop_unrouted(final=True)
    target_names = [a["name"] for a in target["applications"]]

    def same(config: dict) -> bool:
        def by_name(c: dict) -> list:
            return sorted(c["applications"], key=lambda a: a["name"])

        def rest(c: dict) -> dict:
            return {k: v for k, v in c.items() if k != "applications"}

        return by_name(config) == by_name(target) and rest(config) == rest(target)

    if steps and same(steps[-1]["config"]):
        steps[-1].update(config=target, expected_apps=target_names)  # the same, in the new plan's order
    else:
        steps.append({"kind": "final", "apps": [], "summary": "deploy the new plan's config", "config": target,
                      "expected_apps": target_names})
    return {"hitless": not losses, "losses": losses, "steps": steps,
            "from_apps": sorted(old_apps), "to_apps": sorted(new_apps)}


def format_transition(data: dict) -> str:
    lines = ["transition: " + ("hitless (make-before-break)" if data["hitless"] else "NOT hitless")]
    for i, step in enumerate(data["steps"], 1):
        lines.append(f"  {i}. {step['summary']}")
    for loss in data["losses"]:
        lines.append(f"  ! {loss['model']}: {loss['effect']} from step {loss['step'] + 1} until "
                     f"{loss['until']} (its old service {loss['service']} must stop first: the new "
                     "one does not fit beside it by the plan's memory and Ray resources)")
    return "\n".join(lines)
