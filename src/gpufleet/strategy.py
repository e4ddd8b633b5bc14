"""Strategy files: a named list of services, each a model on an engine, placed and routed.

Schema errors raise InputError (exit 2). Whether a valid strategy fits is the planner's business.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InputError

PROJECT_STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# engine_args the planner reads, with their types; vLLM's defaults are applied by the planner.
VLLM_ARGS = {
    "tensor_parallel_size": int, "gpu_memory_utilization": float, "max_model_len": int, "dtype": str,
    "enforce_eager": bool, "max_num_batched_tokens": int, "max_num_seqs": int, "kv_cache_dtype": str,
    # passed through to vLLM untouched
    "trust_remote_code": bool, "enable_lora": bool, "enable_prefix_caching": bool,
    "enable_chunked_prefill": bool, "seed": int, "quantization": str, "revision": str,
    "tokenizer": str, "tokenizer_mode": str, "generation_config": str, "limit_mm_per_prompt": dict,
}
OLLAMA_ARGS = {"context_length": int, "num_parallel": int, "keep_alive": str, "kv_cache_type": str,
               "flash_attention": bool}
SERVICE_KEYS = {"name", "model", "engine", "engine_args", "replicas", "placement", "route", "model_source"}


@dataclass(frozen=True)
class Replicas:
    min: int
    max: int
    initial: int
    target_ongoing_requests: float | None
    autoscaling: bool


@dataclass(frozen=True)
class Service:
    name: str
    model: str
    engine: str
    engine_args: dict
    replicas: Replicas
    label_selector: dict = field(default_factory=dict)
    host: str | None = None
    gpus: tuple | None = None
    model_name: str = ""
    model_source: str | None = None


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    services: tuple
    file: str


def strategies_dir(override: str | None = None) -> Path:
    return Path(override) if override else PROJECT_STRATEGIES


def list_strategies(directory: str | None = None) -> list[str]:
    return sorted(p.stem for p in strategies_dir(directory).glob("*.yml"))


def _fail(file, where, message, fix):
    raise InputError("invalid_field", file, where, message, fix)


def _typed(value, kind, file, where):
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else (
        isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    if not ok:
        _fail(file, where, f"must be {kind.__name__}, got {value!r}", f"write a {kind.__name__} value")
    return float(value) if kind is float else value


def _replicas(raw, file, where) -> Replicas:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            _fail(file, where, f"must be >= 1, got {raw}", "use a positive count, or {min, max} to autoscale")
        return Replicas(raw, raw, raw, None, False)
    if not isinstance(raw, dict):
        _fail(file, where, f"must be a count or a mapping, got {raw!r}",
              "write replicas: 2, or replicas: {min: 1, max: 15, target_ongoing_requests: 5}")
    unknown = sorted(set(raw) - {"min", "max", "initial", "target_ongoing_requests"})
    if unknown:
        _fail(file, f"{where}.{unknown[0]}", "is not a replicas key", "keys: min, max, initial, target_ongoing_requests")
    low = _typed(raw.get("min", 1), int, file, f"{where}.min")
    high = _typed(raw.get("max"), int, file, f"{where}.max") if "max" in raw else _fail(
        file, f"{where}.max", "is required for autoscaling", "add max: N")
    initial = _typed(raw.get("initial", low), int, file, f"{where}.initial")
    target = _typed(raw.get("target_ongoing_requests", 2), float, file, f"{where}.target_ongoing_requests")
    if not 0 <= low <= high or high < 1 or not low <= initial <= high or target <= 0:
        _fail(file, where, f"needs 0 <= min <= initial <= max, max >= 1 and target > 0 (got {raw})",
              "fix the bounds")
    return Replicas(low, high, initial, target, True)


def _engine_args(raw, engine, file, where) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _fail(file, where, "must be a mapping", "write engine_args: {tensor_parallel_size: 1, ...}")
    known = VLLM_ARGS if engine == "vllm" else OLLAMA_ARGS
    args = {}
    for key, value in raw.items():
        if key not in known:
            _fail(file, f"{where}.{key}", f"is not an engine argument gpufleet knows for {engine}",
                  f"known: {', '.join(sorted(known))}")
        args[key] = _typed(value, known[key], file, f"{where}.{key}")
    util = args.get("gpu_memory_utilization")
    if util is not None and not 0 < util <= 1:
        _fail(file, f"{where}.gpu_memory_utilization", f"must be in (0, 1], got {util}",
              "it is the fraction of the device's TOTAL memory this instance may use")
    for key in ("tensor_parallel_size", "max_model_len", "max_num_batched_tokens", "max_num_seqs",
                "context_length", "num_parallel"):
        if key in args and args[key] < 1:
            _fail(file, f"{where}.{key}", f"must be >= 1, got {args[key]}", "use a positive integer")
    return args


def _service(raw, index, file) -> Service:
    where = f"services[{index}]"
    if not isinstance(raw, dict):
        _fail(file, where, "must be a mapping", "see the strategy schema in README.md")
    unknown = sorted(set(raw) - SERVICE_KEYS)
    if unknown:
        _fail(file, f"{where}.{unknown[0]}", "is not a service key", f"keys: {', '.join(sorted(SERVICE_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        _fail(file, f"{where}.name", f"must be a lowercase DNS-style name, got {name!r}", "for example medgemma-27b")
    where = f"services[{name}]"
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        _fail(file, f"{where}.model", f"must be a catalog key, got {model!r}", "for example google/medgemma-27b-it")
    engine = raw.get("engine")
    if engine not in ("vllm", "ollama"):
        _fail(file, f"{where}.engine", f"must be vllm or ollama, got {engine!r}", "set engine: vllm")
    args = _engine_args(raw.get("engine_args"), engine, file, f"{where}.engine_args")
    replicas = _replicas(raw.get("replicas", 1), file, f"{where}.replicas")
    placement = raw.get("placement") or {}
    if not isinstance(placement, dict) or set(placement) - {"label_selector", "host", "gpus"}:
        _fail(file, f"{where}.placement", f"must be a mapping of label_selector, host, gpus; got {placement!r}",
              "write placement: {label_selector: {gpufleet.io/host: node-0}} or {host: node-0, gpus: [3]}")
    selector = placement.get("label_selector") or {}
    if not isinstance(selector, dict):
        _fail(file, f"{where}.placement.label_selector", "must be a mapping of label key to value",
              'for example {gpufleet.io/host: "!node-0"}')
    host, gpus = placement.get("host"), placement.get("gpus")
    if host is not None and not isinstance(host, str):
        _fail(file, f"{where}.placement.host", f"must be an inventory host name, got {host!r}", "for example node-0")
    if gpus is not None:
        if engine != "ollama":
            _fail(file, f"{where}.placement.gpus", "pins devices, which only Ollama services can do",
                  "Ray assigns devices to vLLM replicas; select nodes with label_selector or host instead")
        if not isinstance(gpus, list) or not gpus or not all(isinstance(g, int) and not isinstance(g, bool) for g in gpus):
            _fail(file, f"{where}.placement.gpus", f"must be a non-empty list of GPU indices, got {gpus!r}", "for example [3]")
        if len(set(gpus)) != len(gpus):
            _fail(file, f"{where}.placement.gpus", f"repeats an index: {gpus}", "list each GPU once")
    if engine == "ollama":
        if not host or gpus is None:
            _fail(file, f"{where}.placement", "an Ollama service needs host and gpus",
                  "write placement: {host: node-0, gpus: [3]}")
        if selector:
            _fail(file, f"{where}.placement.label_selector", "does not apply to Ollama services (they are not Ray actors)",
                  "use host and gpus")
        if replicas.autoscaling or replicas.max != 1:
            _fail(file, f"{where}.replicas", "an Ollama service is one systemd unit: replicas must be 1",
                  "add another service for another host")
    route = raw.get("route") or {}
    model_name = route.get("model_name", name) if isinstance(route, dict) else None
    if not isinstance(model_name, str) or not model_name or set(route) - {"model_name"}:
        _fail(file, f"{where}.route", f"must be {{model_name: NAME}}, got {route!r}", "write route: {model_name: medgemma-27b}")
    source = raw.get("model_source")
    if source is not None and (not isinstance(source, str) or not source):
        _fail(file, f"{where}.model_source", f"must be a path on the nodes or a hub id, got {source!r}",
              "for example /var/lib/gpufleet/models/smollm2-135m-instruct")
    return Service(name, model, engine, args, replicas, dict(selector), host,
                   tuple(gpus) if gpus is not None else None, model_name, source)


def parse_strategy(data, file: str, expected_name: str | None = None) -> Strategy:
    if not isinstance(data, dict):
        _fail(file, "-", "a strategy file is a mapping with name, description and services", "see README.md")
    unknown = sorted(set(data) - {"name", "description", "services"})
    if unknown:
        _fail(file, unknown[0], "is not a strategy key", "keys: name, description, services")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        _fail(file, "name", f"must be a lowercase DNS-style name, got {name!r}", "for example dedicated-node0")
    if expected_name and name != expected_name:
        _fail(file, "name", f"is {name!r} but the file is {expected_name}.yml", f"set name: {expected_name}")
    description = data.get("description", "")
    if not isinstance(description, str):
        _fail(file, "description", "must be one line of text", "quote it")
    raw_services = data.get("services")
    if not isinstance(raw_services, list) or not raw_services:
        _fail(file, "services", "must be a non-empty list", "add at least one service")
    services = tuple(_service(raw, i, file) for i, raw in enumerate(raw_services))
    seen = set()
    for service in services:
        if service.name in seen:
            _fail(file, f"services[{service.name}].name", "is used twice", "service names are unique in a file")
        seen.add(service.name)
    return Strategy(name, description.strip(), services, file)


def load_strategy(name: str, directory: str | None = None) -> Strategy:
    folder = strategies_dir(directory)
    path = folder / f"{name}.yml"
    if not path.is_file():
        known = ", ".join(list_strategies(directory)) or "none"
        raise InputError("unknown_strategy", str(folder), "strategy", f"no strategy named {name!r}",
                         f"pick one of: {known} (or point --strategies-dir elsewhere)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError("malformed_yaml", str(path), "-", f"cannot parse: {exc}", "fix the YAML syntax")
    return parse_strategy(data, str(path), name)
