"""The cluster as the Ansible inventory declares it: nodes, their GPUs and their Ray labels."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .label_selectors import KEY_RE, VALUE_RE
from .yamlfile import check_inventory

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
    # gpufleet_gpus.reserved_mib: what the driver keeps from CUDA per GPU (nvidia-smi memory.reserved);
    # None: the catalog's default for gpu_model (catalog.yml `gpus:`)
    gpu_reserved_mib: int | None = None

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
    # The endpoint's serve_auth (the head's variable, read for the plan's warning): api_key or open.
    serve_auth: str = "api_key"

    def node(self, host: str) -> Node | None:
        return next((n for n in self.nodes if n.host == host), None)


def _int(value, source, where, fix, minimum=0, maximum=2**40):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InputError("invalid_field", source, where,
                         f"must be an integer >= {minimum}" + (f" and <= {maximum}" if isinstance(value, int)
                                                               and value > maximum else "") + f", got {value!r}", fix)
    return value


# a DNS name (RFC 1123) for ansible_host when it is not an address: nothing else reaches `ray start`
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"(?=.{{1,253}}\Z){_DNS_LABEL}(\.{_DNS_LABEL})*\.?\Z")


def _address(host: str, hv: dict, source: str) -> str:
    """The address Ray binds: gpufleet_node_ip (an IP address), else ansible_host (an address or DNS name)."""
    ip = hv.get("gpufleet_node_ip")
    if ip is not None and ip != "":
        try:
            return str(ipaddress.ip_address(ip if isinstance(ip, str) else ""))
        except ValueError:
            raise InputError("invalid_field", source, f"{host}.gpufleet_node_ip",
                             f"must be an IP address, got {ip!r}",
                             "give the IPv4 or IPv6 address Ray binds on this node, for example 10.105.20.1") from None
    fallback = hv.get("ansible_host") or host
    if not isinstance(fallback, str):
        fallback = str(fallback)
    try:
        return str(ipaddress.ip_address(fallback))
    except ValueError:
        pass
    if not _DNS_RE.fullmatch(fallback):
        where = f"{host}.ansible_host" if hv.get("ansible_host") else host
        raise InputError("invalid_field", source, where,
                         f"{fallback!r} is neither an IP address nor a DNS name, and Ray binds it",
                         "set gpufleet_node_ip to the node's IP address (or ansible_host to its address)")
    return fallback


def _node(host: str, group: str, hv: dict, source: str) -> Node:
    if not isinstance(host, str) or not host or not VALUE_RE.fullmatch(host):
        raise InputError("invalid_field", source, str(host),
                         f"the host name {host!r} becomes the Ray label value gpufleet.io/host, which must be "
                         "1-63 of [A-Za-z0-9_.-], alphanumeric at both ends",
                         "rename the host (keep the address in ansible_host / gpufleet_node_ip)")
    gpus = hv.get("gpufleet_gpus")
    fix_gpus = "declare gpufleet_gpus: {count: 4, model: A10, memory_mib: 23028} (or {count: 0}) in host or group vars"
    if not isinstance(gpus, dict):
        raise InputError("invalid_field", source, f"{host}.gpufleet_gpus", f"is missing or not a mapping ({gpus!r})",
                         fix_gpus)
    unknown = sorted(map(str, set(gpus) - {"count", "model", "memory_mib", "reserved_mib"}))
    if unknown:
        raise InputError("invalid_field", source, f"{host}.gpufleet_gpus.{unknown[0]}", "is not a known key",
                         "keys are count, model, memory_mib, reserved_mib")
    count = _int(gpus.get("count"), source, f"{host}.gpufleet_gpus.count", fix_gpus, maximum=64)
    model, memory = gpus.get("model"), 0
    if count:
        memory = _int(gpus.get("memory_mib"), source, f"{host}.gpufleet_gpus.memory_mib",
                      "give the per-GPU memory.total that nvidia-smi reports, in MiB", minimum=1, maximum=2**24)
        if not isinstance(model, str) or not VALUE_RE.fullmatch(model) or not model:
            raise InputError("invalid_field", source, f"{host}.gpufleet_gpus.model",
                             f"must be a GPU model name usable as a label value, got {model!r}", "for example A10")
    cpus = hv.get("gpufleet_cpus")
    if cpus is not None:
        cpus = _int(cpus, source, f"{host}.gpufleet_cpus", "the logical CPUs Ray advertises, or omit it", minimum=1,
                    maximum=2**20)
    cpu_memory = _int(hv.get("gpufleet_cpu_memory_mib", 0), source, f"{host}.gpufleet_cpu_memory_mib",
                      "memory (MiB) CPU-engine replicas may use on this node, or omit it", maximum=2**30)
    labels = {HOST_LABEL: host, GROUP_LABEL: group}
    if count:
        labels[GPU_MODEL_LABEL] = model
    extra = hv.get("gpufleet_node_labels") or {}
    if not isinstance(extra, dict):
        raise InputError("invalid_field", source, f"{host}.gpufleet_node_labels", "must be a mapping {key: value}",
                         "for example gpufleet_node_labels: {gpufleet.io/pool: cxr}")
    for key, value in extra.items():
        where = f"{host}.gpufleet_node_labels.{key}"
        if (not isinstance(key, str) or not KEY_RE.fullmatch(key) or key.startswith("ray.io/")
                or len(key.split("/")[-1]) > 63 or len(key) > 317):
            raise InputError("invalid_field", source, where, "is not a valid label key (ray.io/ is reserved)",
                             "use prefix/name with [A-Za-z0-9_.-], for example gpufleet.io/pool")
        if key in labels:
            raise InputError("invalid_field", source, where, "would override an identity label",
                             "identity labels come from the inventory; pick another key")
        if not isinstance(value, str) or not VALUE_RE.fullmatch(value):
            raise InputError("invalid_field", source, where, f"value {value!r} is not a valid label value",
                             "a string of up to 63 [A-Za-z0-9_.-], alphanumeric at both ends")
    labels.update(extra)
    address = _address(host, hv, source)
    reserved = gpus.get("reserved_mib")
    if reserved is not None:
        reserved = _int(reserved, source, f"{host}.gpufleet_gpus.reserved_mib",
                        "give nvidia-smi's memory.reserved per GPU in MiB, or omit it for the catalog's default",
                        maximum=max(memory - 1, 0))
    return Node(host, group, address, count, model if count else None, memory, cpus, cpu_memory, labels,
                gpu_reserved_mib=reserved if count else None)


def _unique_addresses(nodes, source: str) -> None:
    """Two hosts with one address are one machine counted twice: its GPUs would be planned twice."""
    seen: dict = {}
    for node in nodes:
        if node.address in seen:
            raise InputError("invalid_field", source, f"{node.host}.gpufleet_node_ip",
                             f"address {node.address} is also {seen[node.address]}'s: "
                             "one machine would be planned twice",
                             "give each host its own address (gpufleet_node_ip or ansible_host)")
        seen[node.address] = node.host


def cluster_from_hostvars(groups: dict, hostvars: dict, source: str = "inventory") -> Cluster:
    """Build the cluster from Ansible's groups and hostvars (the plugin passes its own)."""
    heads = list(groups.get(HEAD_GROUP) or [])
    if len(heads) != 1:
        raise InputError("invalid_field", source, f"groups.{HEAD_GROUP}",
                         f"must hold exactly one host, holds {len(heads)}",
                         f"put the Ray head alone in group {HEAD_GROUP}")
    workers = [h for h in groups.get(WORKER_GROUP) or [] if h not in heads]
    nodes = [_node(h, "head", hostvars.get(h, {}), source) for h in heads]
    nodes += [_node(h, "worker", hostvars.get(h, {}), source) for h in workers]
    _unique_addresses(nodes, source)
    return Cluster(source, tuple(nodes), _serve_auth(hostvars.get(heads[0], {}), source))


SERVE_AUTH_MODES = ("api_key", "open")


def _serve_auth(head_vars: dict, source: str) -> str:
    mode = head_vars.get("serve_auth", "api_key")
    if mode not in SERVE_AUTH_MODES:
        raise InputError("invalid_field", source, "serve_auth", f"must be one of {', '.join(SERVE_AUTH_MODES)}, "
                         f"got {mode!r}", "leave it unset (api_key: clients send a key) or set it to open")
    return mode


# The inventory variables the planner reads (docs/CONTRACTS.md). Only these are templated, so
# unrelated (possibly vaulted or untemplatable) host variables are never evaluated.
PLANNER_VARS = ("gpufleet_gpus", "gpufleet_cpus", "gpufleet_cpu_memory_mib", "gpufleet_node_labels",
                "gpufleet_node_ip", "ansible_host", "serve_auth")


def planner_hostvars(groups: dict, hostvars) -> dict:
    """The planner's variables of every Ray host, read through Ansible's hostvars (templated as in a play).

    The CLI and the plan play's action plugin both call this with Ansible's own `HostVars`,
    so both plan from the same values."""
    hosts = sorted({h for g in (HEAD_GROUP, WORKER_GROUP) for h in groups.get(g) or []})
    selected = {}
    for host in hosts:
        try:
            host_vars = hostvars[host]
        except KeyError:
            continue
        names = [k for k in PLANNER_VARS if k in host_vars]
        selected[host] = {name: _plain(host_vars[name]) for name in names}
    return selected


def _plain(value):
    """Ansible's tagged/lazy containers as plain Python values (what the planner validates)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


_plugins_ready = False


def _routing_cache_dir() -> Path:
    return Path(os.environ.get("GPUFLEET_CACHE") or Path.home() / ".cache" / "gpufleet") / "ansible-routing"


def cache_ansible_routing() -> None:
    """Keep Ansible's parse of its plugin routing metadata (ansible_builtin_runtime.yml, 370 kB of YAML that
    any import of an ansible.* module after init_plugin_loader makes it read: 40-60 ms of every
    `gpufleet plan`) as JSON, keyed by the digest of the YAML, under $GPUFLEET_CACHE/ansible-routing.

    Ansible provides for this: its collection loader calls `_collection_finder._meta_yml_to_dict`,
    which "may be monkeypatched to another implementation ... to cache the output" (its docstring).
    The result is the same dict (BaseLoader: strings, lists and mappings only, which JSON keeps exactly),
    so the inventory is read exactly as the plays read it. Any failure falls back to Ansible's parse."""
    try:
        from ansible.utils.collection_loader import _collection_finder
    except ImportError:  # pragma: no cover - another Ansible layout: nothing is cached
        return
    parse = getattr(_collection_finder, "_meta_yml_to_dict", None)
    if parse is None or getattr(parse, "gpufleet_cache", False):
        return

    def cached(yaml_string_data, content_id):
        raw = yaml_string_data.encode() if isinstance(yaml_string_data, str) else bytes(yaml_string_data)
        path = _routing_cache_dir() / (hashlib.sha256(raw).hexdigest() + ".json")
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass
        data = parse(yaml_string_data, content_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(temporary, path)
        except (OSError, TypeError, ValueError):
            pass
        return data

    cached.gpufleet_cache = True
    _collection_finder._meta_yml_to_dict = cached


def read_inventory(path: str) -> tuple[dict, dict]:
    """groups and the planner's host variables, read and templated by Ansible itself."""
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.vars.hostvars import HostVars
    from ansible.vars.manager import VariableManager

    global _plugins_ready
    if not _plugins_ready:  # lookups and filters in templated values, set up as ansible-playbook does
        cache_ansible_routing()
        init_plugin_loader([])
        _plugins_ready = True
    if not Path(path).exists():
        raise InputError("missing_file", path, "-i", "no such inventory",
                         "point -i at an inventory folder or file, for example inventory/production")
    check_inventory(path)  # duplicate keys, alias bombs, size: refused before Ansible reads the files
    from ansible import constants

    # One unparsable file in an inventory folder fails the read instead of dropping its hosts with
    # a warning (ansible.cfg sets the same for the playbooks: [inventory] any_unparsed_is_failed).
    constants.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    loader = DataLoader()
    try:
        inventory = InventoryManager(loader=loader, sources=[path])
        if not inventory.hosts:
            raise InputError("invalid_field", path, "-", "no hosts found (missing or unparsable inventory)",
                             "point -i at an inventory folder or file, for example inventory/production")
        variables = VariableManager(loader=loader, inventory=inventory)
        groups = inventory.get_groups_dict()
        return groups, planner_hostvars(groups, HostVars(inventory, variables, loader))
    except AnsibleError as exc:
        raise InputError("invalid_inventory", path, "-", f"Ansible cannot read it: {exc.message}",
                         "fix the file Ansible names above "
                         "(ansible-inventory -i PATH --list shows the same error)") from None


def inventory_source(path: str) -> str:
    """How a plan names its inventory: the absolute path, as Ansible's inventory sources do."""
    return str(Path(path).expanduser().resolve())


def load_cluster(path: str) -> Cluster:
    groups, hostvars = read_inventory(path)
    return cluster_from_hostvars(groups, hostvars, inventory_source(path))
