"""Strategy files: a named list of services, each a model on an engine, placed and routed.

Schema errors raise InputError (exit 2). Whether a valid strategy fits is the planner's business.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import content, yamlfile
from .errors import InputError
from .label_selectors import VALUE_RE

PROJECT_STRATEGIES = content.root() / "strategies"
# fullmatch everywhere: `$` also matches before a trailing newline ("oll\n" would pass and name a unit file).
NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# the OpenAI `model` a route answers to: it reaches the Serve config and request routing
ROUTE_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?")
MAX_TEXT = 4096  # model ids, paths, revisions, descriptions
MAX_REPLICAS = 10_000  # per service; more is a typo, and the plan (one entry per replica) would be huge
MAX_SERVICES = 1_000   # per strategy: 1000 plan in ~3 s; the 19000 a 1 MiB file can hold took minutes

# Values vLLM 0.32 refuses at start, for the engine arguments the schema knows. Copied (the
# planner must not import vLLM); tests/test_hostile.py::test_vllm_value_lists_match_vllm
# compares them with the installed vLLM so a new vLLM's lists cannot drift away unnoticed.
VLLM_VALUES = {
    # vllm/config/model.py:99  ModelDType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
    "dtype": ("auto", "half", "float16", "bfloat16", "float", "float32"),
    # vllm/config/cache.py:39-59  CacheDType = Literal[...] (EngineArgs.kv_cache_dtype: CacheDType)
    "kv_cache_dtype": ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla",
                       "nvfp4_ds_mla", "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
                       "turboquant_3bit_nc", "ultraquant_4bit", "int4_per_token_head", "int8_per_token_head",
                       "fp8_per_token_head", "nvfp4", "nvfp4_4over6"),
    # vllm/model_executor/layers/quantization/__init__.py:15-49  QuantizationMethods = Literal[...];
    # vllm/config/model.py:1451-1455 raises "Unknown quantization method" for any other value, and
    # :1458-1471 refuses DEPRECATED_QUANTIZATION_METHODS (fbgemm_fp8, fp_quant) unless
    # allow_deprecated_quantization, which the schema does not know: left out here.
    "quantization": ("awq", "auto_awq", "fp8", "modelopt", "modelopt_fp4", "modelopt_mxfp8", "modelopt_mixed",
                     "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
                     "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4",
                     "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel",
                     "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8"),
    # vllm/tokenizers/registry.py:44-59  _VLLM_TOKENIZERS, plus "auto" (vllm/config/model.py:89-98 TokenizerMode);
    # TokenizerRegistry.load_tokenizer_cls (registry.py:80) raises for any mode not registered.
    "tokenizer_mode": ("auto", "cohere", "deepseek_v32", "deepseek_v4", "deepseek_v41", "hf", "inkling",
                       "kimi_audio", "kimi_k3", "mistral"),
}

# engine_args the planner reads, with their types; vLLM's defaults are applied by the planner.
VLLM_ARGS = {
    "tensor_parallel_size": int, "gpu_memory_utilization": float, "max_model_len": int, "dtype": str,
    "enforce_eager": bool, "max_num_batched_tokens": int, "max_num_seqs": int, "kv_cache_dtype": str,
    "async_scheduling": bool,  # vLLM's default (None) turns it on on GPUs: memory.max_concurrent_batches
    "kv_cache_memory_bytes": str,  # only "planned": the planner's KV bytes per worker (engine_args.FROM_PLAN)
    # passed through to vLLM untouched
    "trust_remote_code": bool, "enable_lora": bool, "enable_prefix_caching": bool,
    "enable_chunked_prefill": bool, "seed": int, "quantization": str, "revision": str,
    "tokenizer": str, "tokenizer_mode": str, "generation_config": str, "limit_mm_per_prompt": dict,
}
OLLAMA_ARGS = {"context_length": int, "num_parallel": int, "keep_alive": str, "kv_cache_type": str,
               "flash_attention": bool}
# Ollama's OLLAMA_KV_CACHE_TYPE values (docs/faq.md, "How can I set the quantization type for the K/V
# cache?") and OLLAMA_KEEP_ALIVE (a Go duration, or a number of seconds; negative keeps the model loaded)
OLLAMA_KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
OLLAMA_DURATION_RE = re.compile(r"-?(\d+(\.\d+)?|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)")
SERVICE_KEYS = {"name", "model", "engine", "engine_args", "replicas", "placement", "route", "model_source"}
# The tables below (and the ones above) are the strategy schema: the checks here read them, and
# gpufleet.schema exports them as JSON Schema (`gpufleet schema strategy`).
STRATEGY_KEYS = ("name", "description", "services", "max_loaded_models", "routing")
ENGINES = ("vllm", "ollama")
REPLICAS_KEYS = ("min", "max", "initial", "target_ongoing_requests", "idle_unload_s", "idle", "idle_sleep_s")
# A service with replicas.min 0 loads on its first request and unloads after idle_unload_s without one.
# With idle: sleep it first sleeps (vLLM's sleep mode, level 1: weights to host memory, KV cache
# freed, woken in seconds) after idle_sleep_s, and unloads after idle_unload_s.
IDLE_ACTIONS = ("unload", "sleep")
DEFAULT_IDLE_UNLOAD_S = 300
DEFAULT_IDLE_SLEEP_S = 60
DEFAULT_IDLE_UNLOAD_WHEN_SLEEPING_S = 3600
MAX_IDLE_UNLOAD_S = 7 * 24 * 3600
PLACEMENT_KEYS = ("label_selector", "host", "gpus")
ROUTE_KEYS = ("model_name", "domain", "priority", "fallback")
# Routing by content: a request without a model (or with model "auto") goes to the service whose
# domain's example prompts are nearest to its text (embedding cosine similarity).
ROUTING_KEYS = ("embedding_model", "default_model", "min_score", "domains")
AUTO_MODEL = "auto"
MAX_PRIORITY = 100
MAX_EXAMPLES = 64  # per domain: the router embeds them all once
# engine arguments that must be >= 1 (either engine)
POSITIVE_ARGS = ("tensor_parallel_size", "max_model_len", "max_num_batched_tokens", "max_num_seqs",
                 "context_length", "num_parallel")
FLOAT_LIMIT = 1e18  # |float| below this: nan, inf, or a number no setting means
INT_LIMIT = 2**53   # |int| below this
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")  # no text value may hold one (a newline, an escape)
MODALITY_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
DOMAIN_RE = MODALITY_RE  # the same shape: a short lowercase word
MM_LIMIT = 2**31


@dataclass(frozen=True)
class Replicas:
    min: int
    max: int
    initial: int
    target_ongoing_requests: float | None
    autoscaling: bool
    idle_unload_s: int | None = None  # set exactly when min is 0 (the service loads on demand)
    idle: str = "unload"
    idle_sleep_s: int | None = None  # set exactly when idle is sleep

    @property
    def lazy(self) -> bool:
        return self.min == 0


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
    domain: str | None = None
    priority: int = 0  # breaks ties between services that fit a prompt alike: the higher wins
    fallback: tuple = ()  # model names tried in order when this one cannot take a request


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    services: tuple
    file: str
    # at most this many services with replicas.min 0 hold their model at once (None: no cap)
    max_loaded_models: int | None = None
    routing: Routing | None = None


@dataclass(frozen=True)
class Routing:
    embedding_model: str  # the route.model_name of an embedding service of the strategy
    default_model: str    # answers a prompt no domain fits (min_score) or that cannot be scored
    min_score: float
    domains: dict         # domain -> tuple of example prompts


def strategies_dir(override: str | None = None) -> Path:
    return Path(override) if override else PROJECT_STRATEGIES


def _folder(directory: str | None) -> Path:
    folder = strategies_dir(directory)
    if not folder.is_dir():
        raise InputError("missing_file", str(folder), "--strategies-dir",
                         "the strategies folder does not exist" if not folder.exists() else "is not a folder",
                         "point --strategies-dir (gpufleet_strategies_dir) at a folder of STRATEGY.yml files")
    return folder


def list_strategies(directory: str | None = None) -> list[str]:
    return sorted(p.stem for p in _folder(directory).glob("*.yml"))


def _fail(file, where, message, fix):
    raise InputError("invalid_field", file, where, message, fix)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value, file, where, what="text"):
    """A string that may reach a command line, a unit or a config: bounded, one line, no control characters."""
    if isinstance(value, str) and (len(value) > MAX_TEXT or CONTROL_RE.search(value)):
        _fail(file, where, f"must be one line of {what} without control characters, at most {MAX_TEXT} "
              f"characters; got {_short(value)}", "remove the newline or control character")
    return value


def _typed(value, kind, file, where):
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else (
        isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    if not ok:
        _fail(file, where, f"must be {kind.__name__}, got {_short(value)}", f"write a {kind.__name__} value")
    if kind is float and not -FLOAT_LIMIT < value < FLOAT_LIMIT:  # nan, inf, or a number no setting means
        _fail(file, where, f"must be a finite number, got {_short(value)}", "write a plain number")
    if kind is int and not -INT_LIMIT < value < INT_LIMIT:
        _fail(file, where, f"is out of range: {_short(value)}", "write a realistic integer")
    if kind is str:
        _text(value, file, where)
    return float(value) if kind is float else value


def _replicas(raw, file, where) -> Replicas:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            _fail(file, where, f"must be >= 1, got {raw}", "use a positive count, or {min, max} to autoscale")
        if raw > MAX_REPLICAS:
            _fail(file, where, f"must be <= {MAX_REPLICAS}, got {raw}", "use a realistic count")
        return Replicas(raw, raw, raw, None, False)
    if not isinstance(raw, dict):
        _fail(file, where, f"must be a count or a mapping, got {raw!r}",
              "write replicas: 2, or replicas: {min: 1, max: 15, target_ongoing_requests: 5}")
    unknown = sorted(map(str, set(raw) - set(REPLICAS_KEYS)))
    if unknown:
        _fail(file, f"{where}.{unknown[0]}", "is not a replicas key", f"keys: {', '.join(REPLICAS_KEYS)}")
    low = _typed(raw.get("min", 1), int, file, f"{where}.min")
    high = _typed(raw.get("max"), int, file, f"{where}.max") if "max" in raw else _fail(
        file, f"{where}.max", "is required for autoscaling", "add max: N")
    initial = _typed(raw.get("initial", low), int, file, f"{where}.initial")
    target = _typed(raw.get("target_ongoing_requests", 2), float, file, f"{where}.target_ongoing_requests")
    if not 0 <= low <= high or high < 1 or not low <= initial <= high or target <= 0:
        _fail(file, where, f"needs 0 <= min <= initial <= max, max >= 1 and target > 0 (got {_short(raw)})",
              "fix the bounds")
    if high > MAX_REPLICAS:
        _fail(file, f"{where}.max", f"must be <= {MAX_REPLICAS}, got {high}",
              "the plan holds one entry per replica; use a realistic maximum")
    idle = None
    for key in ("idle_unload_s", "idle", "idle_sleep_s"):
        if key in raw and low > 0:
            _fail(file, f"{where}.{key}", f"applies to services that load on demand (min: 0), this one keeps {low}",
                  f"set min: 0 to load on demand and unload or sleep when idle, or drop {key}")
    action = _typed(raw.get("idle", "unload"), str, file, f"{where}.idle")
    if action not in IDLE_ACTIONS:
        _fail(file, f"{where}.idle", f"must be unload or sleep, got {_short(action)}",
              "unload frees the model's memory after idle_unload_s; sleep (GPU only) frees its GPU memory after "
              "idle_sleep_s and keeps the weights in host memory")
    if "idle_sleep_s" in raw and action != "sleep":
        _fail(file, f"{where}.idle_sleep_s", "applies to idle: sleep", "add idle: sleep, or drop idle_sleep_s")
    sleep_s = None
    if low == 0:
        default = DEFAULT_IDLE_UNLOAD_WHEN_SLEEPING_S if action == "sleep" else DEFAULT_IDLE_UNLOAD_S
        idle = _typed(raw.get("idle_unload_s", default), int, file, f"{where}.idle_unload_s")
        if not 1 <= idle <= MAX_IDLE_UNLOAD_S:
            _fail(file, f"{where}.idle_unload_s", f"must be 1..{MAX_IDLE_UNLOAD_S} seconds, got {idle}",
                  f"for example {default}")
        if action == "sleep":
            sleep_s = _typed(raw.get("idle_sleep_s", DEFAULT_IDLE_SLEEP_S), int, file, f"{where}.idle_sleep_s")
            if not 1 <= sleep_s < idle:
                given = "" if "idle_sleep_s" in raw else " (the default)"
                _fail(file, f"{where}.idle_sleep_s", f"must be 1 second or more and less than idle_unload_s "
                      f"({idle}), got {sleep_s}{given}",
                      f"for example {min(DEFAULT_IDLE_SLEEP_S, idle - 1)}" if idle > 1 else "raise idle_unload_s")
    return Replicas(low, high, initial, target, True, idle, action, sleep_s)


# vllm/config/multimodal.py:212-240 (BaseDummyOptions count >= 0; Image/Video/AudioDummyOptions, extra="forbid",
# the sizes > 0) and :470-493 (_validate_limit_per_prompt: an int is the count, a mapping the options).
MM_OPTIONS = {"image": ("count", "width", "height"), "video": ("count", "num_frames", "width", "height"),
              "audio": ("count", "length")}


def _mm_limits(value: dict, file, where) -> dict:
    for modality, limit in value.items():
        at = f"{where}.{modality}"
        if not isinstance(modality, str) or not MODALITY_RE.fullmatch(modality):
            _fail(file, at, f"{_short(modality)} is not a modality name", "for example image, video or audio")
        if isinstance(limit, int) and not isinstance(limit, bool):
            limit = {"count": limit}
        if not isinstance(limit, dict):
            _fail(file, at, f"must be a count or a mapping of options, got {_short(limit)}", "for example image: 2")
        allowed = MM_OPTIONS.get(modality, ("count",))
        for key, number in limit.items():
            if key not in allowed:
                _fail(file, f"{at}.{key}", f"is not an option vLLM 0.32 accepts for {modality}",
                      f"use: {', '.join(allowed)}")
            if isinstance(number, bool) or not isinstance(number, int) or number < (0 if key == "count" else 1) \
                    or number > MM_LIMIT:
                _fail(file, f"{at}.{key}", f"must be an integer >= {0 if key == 'count' else 1}, got {_short(number)}",
                      "write a plain number")
    return value


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
        if key == "limit_mm_per_prompt":
            _mm_limits(args[key], file, f"{where}.{key}")
        if engine == "ollama" and key == "kv_cache_type" and args[key] not in OLLAMA_KV_CACHE_TYPES:
            _fail(file, f"{where}.{key}", f"{_short(args[key])} is not a cache type Ollama knows (it would keep "
                  "an f16 cache the plan did not size)", f"use one of: {', '.join(OLLAMA_KV_CACHE_TYPES)}")
        if engine == "ollama" and key == "keep_alive" and not OLLAMA_DURATION_RE.fullmatch(args[key]):
            _fail(file, f"{where}.{key}", f"{_short(args[key])} is not a duration Ollama reads",
                  "for example 5m, 1h30m, 0 (unload at once) or -1 (keep loaded)")
        allowed = VLLM_VALUES.get(key) if engine == "vllm" else None
        if allowed and args[key] not in allowed:
            _fail(file, f"{where}.{key}", f"{args[key]!r} is not a value vLLM 0.32 accepts; it refuses to start",
                  f"use one of: {', '.join(allowed)}")
    if args.get("kv_cache_memory_bytes", "planned") != "planned":
        _fail(file, f"{where}.kv_cache_memory_bytes", f"must be 'planned', got {_short(args['kv_cache_memory_bytes'])}",
              "write kv_cache_memory_bytes: planned (the planner's KV bytes per worker), or leave it out")
    util = args.get("gpu_memory_utilization")
    if util is not None and not 0 < util <= 1:
        _fail(file, f"{where}.gpu_memory_utilization", f"must be in (0, 1], got {util}",
              "it is the fraction of the device's TOTAL memory this instance may use")
    for key in POSITIVE_ARGS:
        if key in args and args[key] < 1:
            _fail(file, f"{where}.{key}", f"must be >= 1, got {args[key]}", "use a positive integer")
    return args


def _service(raw, index, file) -> Service:
    where = f"services[{index}]"
    if not isinstance(raw, dict):
        _fail(file, where, "must be a mapping", "see the strategy schema in README.md")
    unknown = sorted(map(str, set(raw) - SERVICE_KEYS))
    if unknown:
        _fail(file, f"{where}.{unknown[0]}", "is not a service key", f"keys: {', '.join(sorted(SERVICE_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        _fail(file, f"{where}.name", f"must be a lowercase DNS-style name (1-63 of a-z, 0-9, -), got {_short(name)}",
              "for example medgemma-27b")
    where = f"services[{name}]"
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        _fail(file, f"{where}.model", f"must be a catalog key, got {_short(model)}",
              "for example google/medgemma-27b-it")
    _text(model, file, f"{where}.model", "a catalog key")
    engine = raw.get("engine")
    if engine not in ENGINES:
        _fail(file, f"{where}.engine", f"must be vllm or ollama, got {_short(engine)}", "set engine: vllm")
    args = _engine_args(raw.get("engine_args"), engine, file, f"{where}.engine_args")
    replicas = _replicas(raw.get("replicas", 1), file, f"{where}.replicas")
    placement = raw.get("placement") or {}
    if not isinstance(placement, dict) or set(placement) - set(PLACEMENT_KEYS):
        _fail(file, f"{where}.placement", f"must be a mapping of label_selector, host, gpus; got {placement!r}",
              "write placement: {label_selector: {gpufleet.io/host: node-0}} or {host: node-0, gpus: [3]}")
    selector = placement.get("label_selector") or {}
    if not isinstance(selector, dict):
        _fail(file, f"{where}.placement.label_selector", "must be a mapping of label key to value",
              'for example {gpufleet.io/host: "!node-0"}')
    host, gpus = placement.get("host"), placement.get("gpus")
    if host is not None and (not isinstance(host, str) or not VALUE_RE.fullmatch(host) or not host):
        _fail(file, f"{where}.placement.host", f"must be an inventory host name (it becomes the Ray label value "
              f"gpufleet.io/host: 1-63 of [A-Za-z0-9_.-], alphanumeric at both ends), got {_short(host)}",
              "for example node-0")
    if gpus is not None:
        if engine != "ollama":
            _fail(file, f"{where}.placement.gpus", "pins devices, which only Ollama services can do",
                  "Ray assigns devices to vLLM replicas; select nodes with label_selector or host instead")
        if not isinstance(gpus, list) or not gpus or not all(
                isinstance(g, int) and not isinstance(g, bool) for g in gpus):
            _fail(file, f"{where}.placement.gpus", f"must be a non-empty list of GPU indices, got {_short(gpus)}",
                  "for example [3]")
        if len(set(gpus)) != len(gpus):
            _fail(file, f"{where}.placement.gpus", f"repeats an index: {gpus}", "list each GPU once")
    if engine == "ollama":
        if not host or gpus is None:
            _fail(file, f"{where}.placement", "an Ollama service needs host and gpus",
                  "write placement: {host: node-0, gpus: [3]}")
        if selector:
            _fail(file, f"{where}.placement.label_selector",
                  "does not apply to Ollama services (they are not Ray actors)",
                  "use host and gpus")
        if replicas.autoscaling or replicas.max != 1:
            _fail(file, f"{where}.replicas", "an Ollama service is one systemd unit: replicas must be 1",
                  "add another service for another host")
    route = raw.get("route") or {}
    if not isinstance(route, dict) or set(route) - set(ROUTE_KEYS):
        _fail(file, f"{where}.route", f"must be a mapping of {', '.join(ROUTE_KEYS)}, got {_short(route)}",
              "write route: {model_name: medgemma-27b}")
    model_name = route.get("model_name", name)
    if not isinstance(model_name, str) or not model_name:
        _fail(file, f"{where}.route.model_name", f"must be a model name, got {_short(model_name)}",
              "write route: {model_name: medgemma-27b}")
    if not ROUTE_RE.fullmatch(model_name) or model_name == AUTO_MODEL:
        _fail(file, f"{where}.route.model_name", f"must be 1-128 of [A-Za-z0-9._:/-], alphanumeric at both ends, "
              f"and not {AUTO_MODEL!r} (it asks the router to choose); got {_short(model_name)}",
              "for example medgemma-27b")
    domain = route.get("domain")
    if domain is not None and (not isinstance(domain, str) or not DOMAIN_RE.fullmatch(domain)):
        _fail(file, f"{where}.route.domain", f"must be a domain name of routing.domains, got {_short(domain)}",
              "for example coding")
    priority = _typed(route.get("priority", 0), int, file, f"{where}.route.priority")
    if not 0 <= priority <= MAX_PRIORITY:
        _fail(file, f"{where}.route.priority", f"must be 0..{MAX_PRIORITY}, got {priority}",
              "the higher wins a tie, for example 5")
    if "priority" in route and domain is None:
        _fail(file, f"{where}.route.priority", "breaks ties between domains: it needs route.domain",
              "add route: {domain: NAME} or drop priority")
    fallback = route.get("fallback", [])
    fallback = [] if fallback is None else fallback
    if not isinstance(fallback, list) or not all(
            isinstance(f, str) and ROUTE_RE.fullmatch(f) and f != AUTO_MODEL for f in fallback):
        _fail(file, f"{where}.route.fallback", f"must be a list of model names, got {_short(fallback)}",
              "for example [medgemma-27b]")
    if model_name in fallback or len(set(fallback)) != len(fallback):
        _fail(file, f"{where}.route.fallback", f"names {model_name!r} itself or a model twice: {fallback}",
              "list each other model once")
    if engine == "ollama" and (domain or fallback):
        _fail(file, f"{where}.route", "domain and fallback are the Serve router's; an Ollama service has its own port",
              "drop route.domain and route.fallback from this service")
    source = raw.get("model_source")
    if source is not None and (not isinstance(source, str) or not source):
        _fail(file, f"{where}.model_source", f"must be a path on the nodes or a hub id, got {_short(source)}",
              "for example /var/lib/gpufleet/models/smollm2-135m-instruct")
    _text(source, file, f"{where}.model_source", "a path or hub id")
    return Service(name, model, engine, args, replicas, dict(selector), host,
                   tuple(gpus) if gpus is not None else None, model_name, source, domain, priority, tuple(fallback))


def parse_strategy(data, file: str, expected_name: str | None = None) -> Strategy:
    if not isinstance(data, dict):
        _fail(file, "-", "a strategy file is a mapping with name, description and services", "see README.md")
    unknown = sorted(map(str, set(data) - set(STRATEGY_KEYS)))
    if unknown:
        _fail(file, unknown[0], "is not a strategy key", f"keys: {', '.join(STRATEGY_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        _fail(file, "name", f"must be a lowercase DNS-style name (1-63 of a-z, 0-9, -), got {_short(name)}",
              "for example dedicated-node0")
    if expected_name and name != expected_name:
        _fail(file, "name", f"is {name!r} but the file is {expected_name}.yml", f"set name: {expected_name}")
    description = data.get("description", "")
    if not isinstance(description, str):
        _fail(file, "description", "must be one line of text", "quote it")
    _text(description.strip(), file, "description")
    raw_services = data.get("services")
    if not isinstance(raw_services, list) or not raw_services:
        _fail(file, "services", "must be a non-empty list", "add at least one service")
    if len(raw_services) > MAX_SERVICES:
        _fail(file, "services", f"holds {len(raw_services)} services; at most {MAX_SERVICES} are planned",
              "split the strategy, or use replicas for copies of one service")
    services = tuple(_service(raw, i, file) for i, raw in enumerate(raw_services))
    seen = set()
    for service in services:
        if service.name in seen:
            _fail(file, f"services[{service.name}].name", "is used twice", "service names are unique in a file")
        seen.add(service.name)
    cap = data.get("max_loaded_models")
    if cap is not None:
        cap = _typed(cap, int, file, "max_loaded_models")
        lazy = [s for s in services if s.replicas.lazy]
        if not lazy:
            _fail(file, "max_loaded_models", "caps the services that load on demand (replicas.min: 0); there are none",
                  "set replicas: {min: 0, max: 1} on the services that may unload, or drop max_loaded_models")
        if not 1 <= cap <= MAX_SERVICES:
            _fail(file, "max_loaded_models", f"must be 1..{MAX_SERVICES}, got {cap}", "for example 2")
        warm = [s.name for s in lazy if s.replicas.initial > 0]
        if len(warm) > cap:
            _fail(file, "max_loaded_models", f"is {cap} but {len(warm)} on-demand services start loaded "
                  f"(replicas.initial > 0: {', '.join(warm)})", f"raise max_loaded_models to {len(warm)} or set "
                  "initial: 0 on some of them")
        # The endpoint counts loaded models by the name clients ask for (route.model_name).
        for service in lazy:
            sharing = [s.name for s in services if s is not service and s.model_name == service.model_name]
            if sharing:
                _fail(file, f"services[{service.name}].route.model_name",
                      f"{service.model_name!r} is also served by {', '.join(sharing)}: under max_loaded_models "
                      "each on-demand service answers to a name of its own (the endpoint counts loaded models by name)",
                      f"give {service.name} its own route: {{model_name: ...}}, or drop max_loaded_models")
    served = {s.model_name for s in services if s.engine == "vllm"}
    for service in services:
        twin = next((s for s in services if s.model_name == service.model_name and s is not service), None)
        if twin and (twin.domain, twin.priority, twin.fallback) != (service.domain, service.priority, service.fallback):
            _fail(file, f"services[{service.name}].route", f"answers to {service.model_name!r} like {twin.name} "
                  "but with another domain, priority or fallback (the router routes by model name)",
                  f"give both the same route, or {service.name} its own model_name")
        unknown = [f for f in service.fallback if f not in served]
        if unknown:
            _fail(file, f"services[{service.name}].route.fallback", f"{unknown[0]!r} is not the model_name of a "
                  "vLLM service of this strategy", f"use one of: {', '.join(sorted(served))}")
    routing = _routing(data.get("routing"), services, served, file)
    return Strategy(name, description.strip(), services, file, cap, routing)


def _routing(raw, services, served: set, file) -> Routing | None:
    domains_used = {s.domain: s.name for s in services if s.domain}
    if raw is None:
        if domains_used:
            domain, service = next(iter(domains_used.items()))
            _fail(file, f"services[{service}].route.domain", f"domain {domain!r} needs routing.domains",
                  "add routing: {embedding_model: ..., default_model: ..., domains: {NAME: [example prompts]}}")
        return None
    if not isinstance(raw, dict) or set(raw) - set(ROUTING_KEYS):
        _fail(file, "routing", f"must be a mapping of {', '.join(ROUTING_KEYS)}, got {_short(raw)}",
              "see README.md, Routing by content")
    for key in ("embedding_model", "default_model"):
        value = raw.get(key)
        if not isinstance(value, str) or value not in served:
            _fail(file, f"routing.{key}", f"must be the model_name of a vLLM service of this strategy, got "
                  f"{_short(value)}", f"use one of: {', '.join(sorted(served))}")
    for service in services:
        if service.model_name == raw["embedding_model"] and service.replicas.lazy:
            _fail(file, f"services[{service.name}].replicas", "serves routing.embedding_model, which scores every "
                  "routed request: loaded on demand it would never unload and hold a slot of the cap",
                  "keep it loaded (replicas: 1)")
    min_score = _typed(raw.get("min_score", 0.0), float, file, "routing.min_score")
    if not -1 <= min_score <= 1:
        _fail(file, "routing.min_score", f"is a cosine similarity, -1..1, got {min_score}", "for example 0.3")
    domains = raw.get("domains")
    if not isinstance(domains, dict) or not domains:
        _fail(file, "routing.domains", f"must map each domain to example prompts, got {_short(domains)}",
              "for example domains: {coding: [Fix this Python traceback]}")
    for domain, service in domains_used.items():
        if domain not in domains:
            _fail(file, f"services[{service}].route.domain", f"{domain!r} is not in routing.domains",
                  f"use one of: {', '.join(map(str, domains))}")
    parsed = {}
    for domain, examples in domains.items():
        where = f"routing.domains.{domain}"
        if not isinstance(domain, str) or not DOMAIN_RE.fullmatch(domain):
            _fail(file, where, f"{_short(domain)} is not a domain name (1-32 of a-z, 0-9, _)", "for example coding")
        if not isinstance(examples, list) or not 1 <= len(examples) <= MAX_EXAMPLES or not all(
                isinstance(e, str) and e.strip() for e in examples):
            _fail(file, where, f"must be a list of 1..{MAX_EXAMPLES} example prompts, got {_short(examples)}",
                  "write a few prompts this domain's model should answer")
        for i, example in enumerate(examples):
            _text(example, file, f"{where}[{i}]")
        if domain not in domains_used:
            _fail(file, where, "no service has this domain", f"set route: {{domain: {domain}}} on a service, "
                  "or drop the domain")
        parsed[domain] = tuple(e.strip() for e in examples)
    return Routing(raw["embedding_model"], raw["default_model"], min_score, parsed)


def load_strategy(name: str, directory: str | None = None) -> Strategy:
    folder = _folder(directory)
    known = ", ".join(list_strategies(directory)) or "none (the folder holds no *.yml file)"
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        # a plain name, never a path: -s ../x/y must not read a file outside the strategies folder
        raise InputError("unknown_strategy", str(folder), "strategy",
                         f"{_short(name)} is not a strategy name (a plain name: 1-63 of a-z, 0-9, -; not a path)",
                         f"pick one of: {known} (or point --strategies-dir at another folder)")
    path = folder / f"{name}.yml"
    if not path.is_file():
        raise InputError("unknown_strategy", str(folder), "strategy", f"no strategy named {name!r}",
                         f"pick one of: {known} (or point --strategies-dir elsewhere)")
    data = yamlfile.load_file(path, what="strategy file")
    return parse_strategy(data, str(path), name)
