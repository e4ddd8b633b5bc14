"""The cluster as the Ansible inventory declares it: nodes, their GPUs and their Ray labels."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError
from .selectors import KEY_RE, VALUE_RE

HEAD_GROUP, WORKER_GROUP = "ray_head", "ray_workers"
HOST_LABEL, GROUP_LABEL, GPU_MODEL_LABEL = "gpufleet.io/host", "gpufleet.io/group", "gpufleet.io/gpu-model"
# Ray sets this one itself from the GPU it detects (an A10 registers "A10"); we predict it for matching only.
RAY_ACCELERATOR_LABEL = "ray.io/accelerator-type"


@dataclass(frozen=True)
class Node:
    host: str
    group: str  # head | worker
    address: str
    gpu_count: int
    gpu_model: str | None
    gpu_memory_mib: int
    cpus: int | None
    cpu_memory_mib: int
    labels: dict = field(default_factory=dict)  # what `ray start --labels` gets

    @property
    def match_labels(self) -> dict:
        """Labels a selector sees on this node: ours plus the accelerator type Ray adds."""
        if self.gpu_count and self.gpu_model:
            return {**self.labels, RAY_ACCELERATOR_LABEL: self.gpu_model}
        return self.labels


@dataclass(frozen=True)
class Cluster:
    source: str
    nodes: tuple

    def node(self, host: str) -> Node | None:
        return next((n for n in self.nodes if n.host == host), None)


def _int(value, source, where, fix, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError("invalid_field", source, where, f"must be an integer >= {minimum}, got {value!r}", fix)
    return value


def _node(host: str, group: str, hv: dict, source: str) -> Node:
    gpus = hv.get("gpufleet_gpus")
    fix_gpus = "declare gpufleet_gpus: {count: 4, model: A10, memory_mib: 23028} (or {count: 0}) in host or group vars"
    if not isinstance(gpus, dict):
        raise InputError("invalid_field", source, f"{host}.gpufleet_gpus", f"is missing or not a mapping ({gpus!r})", fix_gpus)
    unknown = sorted(set(gpus) - {"count", "model", "memory_mib"})
    if unknown:
        raise InputError("invalid_field", source, f"{host}.gpufleet_gpus.{unknown[0]}", "is not a known key",
                         "keys are count, model, memory_mib")
    count = _int(gpus.get("count"), source, f"{host}.gpufleet_gpus.count", fix_gpus)
    model, memory = gpus.get("model"), 0
    if count:
        memory = _int(gpus.get("memory_mib"), source, f"{host}.gpufleet_gpus.memory_mib",
                      "give the per-GPU memory.total that nvidia-smi reports, in MiB", minimum=1)
        if not isinstance(model, str) or not VALUE_RE.match(model) or not model:
            raise InputError("invalid_field", source, f"{host}.gpufleet_gpus.model",
                             f"must be a GPU model name usable as a label value, got {model!r}", "for example A10")
    cpus = hv.get("gpufleet_cpus")
    if cpus is not None:
        cpus = _int(cpus, source, f"{host}.gpufleet_cpus", "the logical CPUs Ray advertises, or omit it", minimum=1)
    cpu_memory = _int(hv.get("gpufleet_cpu_memory_mib", 0), source, f"{host}.gpufleet_cpu_memory_mib",
                      "memory (MiB) CPU-engine replicas may use on this node, or omit it")
    labels = {HOST_LABEL: host, GROUP_LABEL: group}
    if count:
        labels[GPU_MODEL_LABEL] = model
    extra = hv.get("gpufleet_node_labels") or {}
    if not isinstance(extra, dict):
        raise InputError("invalid_field", source, f"{host}.gpufleet_node_labels", "must be a mapping {key: value}",
                         "for example gpufleet_node_labels: {gpufleet.io/pool: cxr}")
    for key, value in extra.items():
        where = f"{host}.gpufleet_node_labels.{key}"
        if not isinstance(key, str) or not KEY_RE.match(key) or key.startswith("ray.io/"):
            raise InputError("invalid_field", source, where, "is not a valid label key (ray.io/ is reserved)",
                             "use prefix/name with [A-Za-z0-9_.-], for example gpufleet.io/pool")
        if key in labels:
            raise InputError("invalid_field", source, where, "would override an identity label",
                             "identity labels come from the inventory; pick another key")
        if not isinstance(value, str) or not VALUE_RE.match(value):
            raise InputError("invalid_field", source, where, f"value {value!r} is not a valid label value",
                             "a string of up to 63 [A-Za-z0-9_.-], alphanumeric at both ends")
    labels.update(extra)
    address = str(hv.get("gpufleet_node_ip") or hv.get("ansible_host") or host)
    return Node(host, group, address, count, model if count else None, memory, cpus, cpu_memory, labels)


def cluster_from_hostvars(groups: dict, hostvars: dict, source: str = "inventory") -> Cluster:
    """Build the cluster from Ansible's groups and hostvars (the plugin passes its own)."""
    heads = list(groups.get(HEAD_GROUP) or [])
    if len(heads) != 1:
        raise InputError("invalid_field", source, f"groups.{HEAD_GROUP}",
                         f"must hold exactly one host, holds {len(heads)}", f"put the Ray head alone in group {HEAD_GROUP}")
    workers = [h for h in groups.get(WORKER_GROUP) or [] if h not in heads]
    nodes = [_node(h, "head", hostvars.get(h, {}), source) for h in heads]
    nodes += [_node(h, "worker", hostvars.get(h, {}), source) for h in workers]
    return Cluster(source, tuple(nodes))


def read_inventory(path: str) -> tuple[dict, dict]:
    """groups and hostvars of an inventory, with Ansible's own semantics (group_vars, host_vars, inheritance)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[path])
    if not inventory.hosts:
        raise InputError("invalid_field", path, "-", "no hosts found (missing or unparsable inventory)",
                         "point -i at an inventory folder or file, for example inventory/production")
    variables = VariableManager(loader=loader, inventory=inventory)
    hostvars = {h.name: variables.get_vars(host=h, include_hostvars=False) for h in inventory.get_hosts()}
    return inventory.get_groups_dict(), hostvars


def load_cluster(path: str) -> Cluster:
    groups, hostvars = read_inventory(path)
    return cluster_from_hostvars(groups, hostvars, path)
