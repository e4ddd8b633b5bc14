"""The model catalog: sizes and shapes of models, and the engines' constant overheads."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import yamlfile
from .errors import InputError

BUILTIN_CATALOG = "catalog.yml"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}

_HF_FIELDS = ("weights_bytes", "layers", "attention_heads", "kv_heads", "head_dim",
              "hidden_size", "intermediate_size", "vocab_size", "max_context")
# what the Ollama KV estimate reads from a GGUF entry's base (or from the entry itself)
_ARCH_FIELDS = ("layers", "kv_heads", "head_dim")
RUNNERS = ("generate", "pooling")
ENGINES = ("vllm", "ollama")
MAX_INT = 2**50  # bytes of the largest checkpoint and far beyond; anything above is a typo
# The tables below (and the ones above) are the catalog schema: the checks here read them, and
# gpufleet.schema exports them as JSON Schema (`gpufleet schema catalog`).
CATALOG_KEYS = ("models", "engines", "gpus", "calibration")
FORMATS = ("hf", "gguf")
GGUF_FIELDS = ("ollama_tag", "size_bytes")  # required in a gguf entry
# integer fields that are >= 1 when given (every other integer field is >= 0)
POSITIVE_FIELDS = ("layers", "attention_heads", "kv_heads", "head_dim", "hidden_size", "intermediate_size",
                   "vocab_size", "max_context", "size_bytes", "sliding_window")
NAME_FIELDS = ("ollama_tag", "base")  # names without spaces or control characters, 1-256 characters
MAX_NAME = 256
NAME_FORBIDDEN_RE = re.compile(r"[\x00-\x20\x7f]")  # spaces and control characters
EXTRA_FIELDS = ("params_b",)  # accepted, not kept in Model


@dataclass(frozen=True)
class Model:
    key: str
    format: str  # hf | gguf
    weights_bytes: dict = field(default_factory=dict)
    layers: int = 0
    attention_heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    vocab_size: int = 0
    max_context: int = 0
    sliding_window: int | None = None
    sliding_layers: int = 0
    runner: str = "generate"
    ollama_tag: str | None = None
    size_bytes: int = 0
    base: str | None = None
    # vision tower (multimodal models): what vLLM's profile run pushes through the encoder
    vision_hidden_size: int = 0
    vision_intermediate_size: int = 0
    vision_patches_per_item: int = 0   # encoder positions of one image of the largest size
    vision_tokens_per_item: int = 0    # decoder tokens that image becomes

    @property
    def full_layers(self) -> int:
        return self.layers - self.sliding_layers


@dataclass(frozen=True)
class Catalog:
    models: dict
    engines: dict
    sources: tuple
    gpus: dict = field(default_factory=dict)  # GPU model -> {reserved_mib: ...} (catalog `gpus:`)
    # What a site measured (`gpufleet calibrate`): engine -> model -> device ("cpu" or a GPU model)
    # -> {overhead_mib: ...}, the non-KV memory beyond weights and activations the engine showed.
    calibration: dict = field(default_factory=dict)

    def overhead_mib(self, engine: str, model: str, device: str | None) -> float | None:
        """A measured overhead for this engine, model and device kind, or None (use the constants)."""
        return ((self.calibration.get(engine) or {}).get(model) or {}).get(device or "", {}).get("overhead_mib")

    def get(self, key: str) -> Model | None:
        return self.models.get(key)

    def reserved_mib(self, gpu_model: str | None, memory_mib: int) -> int:
        """Memory the driver keeps out of CUDA's reach on one GPU (nvidia-smi memory.reserved):
        the catalog's figure for the model, else the A10's measured share of memory.total (README)."""
        known = (self.gpus.get(gpu_model) or {}).get("reserved_mib")
        if known is not None:
            return int(known)
        share = self.gpus.get("default", {}).get("reserved_share", 0)
        return -(-int(memory_mib * share * 1_000_000) // 1_000_000) if share else 0

    def architecture(self, model: Model) -> Model:
        """The HF entry that describes a model's layers (a GGUF build points to its base)."""
        return self.models.get(model.base, model) if model.base else model


def _read_yaml(path: Path | str, text: str | bytes | None = None) -> dict:
    if text is None:
        data = yamlfile.load_file(path, what="catalog file",
                                  fix="check the path given with --catalog / gpufleet_catalog_files")
    else:
        data = yamlfile.load_text(text, str(path))
    if (not isinstance(data, dict) or not isinstance(data.get("models") or {}, dict)
            or not set(data) & set(CATALOG_KEYS)):
        # no key of the file is echoed: --catalog pointed at some other file must not print its content
        raise InputError("invalid_field", str(path), "models",
                         "a catalog is a mapping with a `models:` mapping", "see src/gpufleet/catalog.yml")
    unknown = sorted(map(str, set(data) - set(CATALOG_KEYS)))
    if unknown:
        raise InputError("invalid_field", str(path), unknown[0][:64], "is not a catalog key",
                         "a catalog holds models:, engines:, gpus: and calibration:")
    _calibration(data.get("calibration"), str(path))
    if not isinstance(data.get("gpus") or {}, dict):
        raise InputError("invalid_field", str(path), "gpus", "must be a mapping of GPU model to facts",
                         "for example gpus: {A10: {reserved_mib: 513}}")
    for gpu, facts in (data.get("gpus") or {}).items():
        if not isinstance(facts, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                                              for v in facts.values()):
            raise InputError("invalid_field", str(path), f"gpus.{gpu}", "must map fact names to numbers >= 0",
                             "for example gpus: {A10: {reserved_mib: 513}}")
    if not isinstance(data.get("engines") or {}, dict):
        raise InputError("invalid_field", str(path), "engines", "must be a mapping of engine to constants",
                         "see the engines: section of src/gpufleet/catalog.yml")
    return data


def _calibration(data, source: str) -> None:
    """calibration: {engine: {model: {device: {overhead_mib: number >= 0}}}} (gpufleet calibrate)."""
    fix = "see what `gpufleet calibrate` writes: calibration: {vllm: {MODEL: {cpu: {overhead_mib: 812.5}}}}"
    if data is None:
        return
    if not isinstance(data, dict):
        raise InputError("invalid_field", source, "calibration", "must be a mapping", fix)
    for engine, models in data.items():
        if engine not in ENGINES or not isinstance(models, dict):
            raise InputError("invalid_field", source, f"calibration.{str(engine)[:64]}",
                             f"must be one of {', '.join(ENGINES)} mapping models to devices", fix)
        for model, devices in models.items():
            if not isinstance(devices, dict):
                raise InputError("invalid_field", source, f"calibration.{engine}.{str(model)[:256]}",
                                 "must map device kinds (cpu, or a GPU model) to figures", fix)
            for device, figures in devices.items():
                where = f"calibration.{engine}.{str(model)[:256]}.{str(device)[:64]}"
                if not isinstance(figures, dict) or set(figures) != {"overhead_mib"}:
                    raise InputError("invalid_field", source, where, "must be {overhead_mib: N}", fix)
                _number(figures["overhead_mib"], source, f"{where}.overhead_mib", minimum=0, integer=False,
                        fix="give the measured MiB")


def _number(value, source, where, minimum=0, integer=True, fix="give a positive integer"):
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not minimum <= value <= MAX_INT:
        kind = "an integer" if integer else "a number"
        raise InputError("invalid_field", source, where, f"must be {kind} >= {minimum}, got {value!r}"
                         if not isinstance(value, str) else f"must be {kind} >= {minimum}, got the string {value!r}",
                         fix + (" (unquoted)" if isinstance(value, str) else ""))
    return value


# a model key is a hub id or an Ollama tag: it reaches the Serve config, units and messages
MODEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")


def _model(key: str, entry, source: str) -> Model:
    where = f"models.{key}"
    if not MODEL_KEY_RE.fullmatch(key):
        raise InputError("invalid_field", source, f"models.{key!r}",
                         "is not a model key (a hub id or an Ollama tag: [A-Za-z0-9._:/@+-], no spaces)",
                         "for example acme/tiny-1b or tiny:q4")
    if not isinstance(entry, dict):
        raise InputError("invalid_field", source, where, "an entry is a mapping of fields",
                         "see the field list at the top of src/gpufleet/catalog.yml")
    fmt = entry.get("format")
    if fmt not in FORMATS:
        raise InputError("invalid_field", source, f"{where}.format", f"is {fmt!r}", "use hf or gguf")
    known = set(Model.__dataclass_fields__) - {"key"}
    unknown = sorted(map(str, set(entry) - known - set(EXTRA_FIELDS)))
    if unknown:
        raise InputError("invalid_field", source, f"{where}.{unknown[0]}", "is not a catalog field",
                         f"remove it; known fields: {', '.join(sorted(known))}")
    required = _HF_FIELDS if fmt == "hf" else GGUF_FIELDS
    for name in required:
        value = entry.get(name)
        ok = isinstance(value, dict) and value if name == "weights_bytes" else (
            isinstance(value, int) and not isinstance(value, bool) and value > 0 if name != "ollama_tag"
            else isinstance(value, str) and value)
        if not ok and value is not None and name not in ("weights_bytes", "ollama_tag"):
            _number(value, source, f"{where}.{name}", minimum=1)  # says what is wrong with it
        if not ok:
            raise InputError("invalid_field", source, f"{where}.{name}", f"is missing or invalid ({value!r})",
                             "give a positive integer (weights_bytes: {dtype: bytes}; ollama_tag: a string)")
    # every field, present or required, has its type and range (a string or negative size is a traceback
    # or a nonsense plan later)
    for name in POSITIVE_FIELDS:
        if entry.get(name) is not None:
            _number(entry[name], source, f"{where}.{name}", minimum=1)
    if "sliding_layers" in entry:
        _number(entry["sliding_layers"], source, f"{where}.sliding_layers", minimum=0)
    for name, spec in Model.__dataclass_fields__.items():  # any other integer field (vision_*, ...)
        if name in entry and (spec.type == "int" or (spec.type == "int | None" and entry[name] is not None)):
            _number(entry[name], source, f"{where}.{name}", minimum=0)  # an explicit null too
    if "weights_bytes" in entry and entry["weights_bytes"] is None:
        raise InputError("invalid_field", source, f"{where}.weights_bytes", "is null",
                         "give {dtype: bytes}, or leave it out of a GGUF entry")
    if "params_b" in entry:
        _number(entry["params_b"], source, f"{where}.params_b", minimum=0, integer=False, fix="give a number")
    if "weights_bytes" in entry and not isinstance(entry["weights_bytes"], dict):
        raise InputError("invalid_field", source, f"{where}.weights_bytes", "must be a mapping {dtype: bytes}",
                         "for example weights_bytes: {bfloat16: 1200000000}")
    for dtype, size in (entry.get("weights_bytes") or {}).items():
        if dtype not in DTYPE_BYTES:
            raise InputError("invalid_field", source, f"{where}.weights_bytes.{dtype}",
                             "is not a dtype the planner sizes",
                             f"use one of: {', '.join(DTYPE_BYTES)}")
        _number(size, source, f"{where}.weights_bytes.{dtype}", minimum=1, fix="give the checkpoint's bytes")
    layers, sliding = entry.get("layers") or 0, entry.get("sliding_layers") or 0
    if sliding > layers:
        raise InputError("invalid_field", source, f"{where}.sliding_layers",
                         f"is {sliding}, more than the model's {layers} layers",
                         "count the local layers among `layers`")
    if sliding and entry.get("sliding_window") is None:
        raise InputError("invalid_field", source, f"{where}.sliding_window",
                         "is missing: sliding_layers needs the window",
                         "give sliding_window (the model's config.json), or drop sliding_layers")
    heads, kv_heads = entry.get("attention_heads"), entry.get("kv_heads")
    if heads and kv_heads and heads % kv_heads:
        raise InputError("invalid_field", source, f"{where}.kv_heads",
                         f"{kv_heads} KV heads do not divide the {heads} attention heads",
                         "copy num_key_value_heads and num_attention_heads from the model's config.json")
    runner = entry.get("runner", "generate")
    if runner not in RUNNERS:
        raise InputError("invalid_field", source, f"{where}.runner", f"is {runner!r}",
                         f"use one of: {', '.join(RUNNERS)}")
    for name in NAME_FIELDS:
        value = entry.get(name)
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_NAME
                                  or NAME_FORBIDDEN_RE.search(value)):
            raise InputError("invalid_field", source, f"{where}.{name}",
                             f"must be a name without spaces, got {value!r}",
                             "for example medgemma-4b-it:q8" if name == "ollama_tag" else "a catalog key")
    if fmt == "gguf" and not entry.get("base") and not all(entry.get(f) for f in _ARCH_FIELDS):
        raise InputError("invalid_field", source, f"{where}.base",
                         "is missing: without the base model's layers the KV cache would be sized 0",
                         f"set base: to the HF entry this GGUF quantises, or give {', '.join(_ARCH_FIELDS)}")
    if fmt == "hf" and entry.get("base"):
        raise InputError("invalid_field", source, f"{where}.base", "applies to GGUF (Ollama) entries only",
                         "remove it")
    values = {k: v for k, v in entry.items() if k in known}
    return Model(key=key, **values)


def _engines(constants, engine, source) -> dict:
    where = f"engines.{engine}"
    if engine not in ENGINES:
        raise InputError("invalid_field", source, where, "is not an engine gpufleet plans",
                         f"use one of: {', '.join(ENGINES)}")
    if not isinstance(constants, dict):
        raise InputError("invalid_field", source, where, "must be a mapping of constant to value",
                         "see the engines: section of src/gpufleet/catalog.yml")
    for name, value in constants.items():
        if name in _ENGINE_COUNTS:  # divisors and counts: 0 or a fraction is a ZeroDivisionError or a nonsense plan
            _number(value, source, f"{where}.{name}", minimum=1, fix="give a positive whole number")
        else:
            _number(value, source, f"{where}.{name}", minimum=0, integer=False,
                    fix="give a number of MiB (or tokens)")
    return constants


_ENGINE_COUNTS = ("block_size", "max_num_batched_tokens", "max_num_seqs", "context_length", "num_parallel",
                  "sampler_fp32_tensors")


def load_catalog(extra_files=()) -> Catalog:
    """The built-in catalog, then each extra file in order (later entries replace earlier ones)."""
    builtin = resources.files("gpufleet").joinpath(BUILTIN_CATALOG)
    layers = [(str(builtin), _read_yaml(builtin, builtin.read_bytes()))]
    layers += [(str(p), _read_yaml(p)) for p in extra_files]
    models, engines, origin, gpus, calibration = {}, {}, {}, {}, {}
    for source, data in layers:
        for engine, by_model in (data.get("calibration") or {}).items():
            for model, devices in by_model.items():
                calibration.setdefault(engine, {}).setdefault(str(model), {}).update(
                    {str(d): dict(f) for d, f in devices.items()})
        for gpu, facts in (data.get("gpus") or {}).items():
            gpus.setdefault(str(gpu), {}).update(facts)
        for key, entry in (data.get("models") or {}).items():
            models[str(key)] = _model(str(key), entry, source)
            origin[str(key)] = source
        for engine, constants in (data.get("engines") or {}).items():
            engines.setdefault(engine, {}).update(_engines(constants or {}, engine, source))
    for model in models.values():
        if model.base and model.base not in models:
            raise InputError("invalid_field", origin[model.key], f"models.{model.key}.base",
                             f"base model {model.base!r} is not in the catalog",
                             "add the base model's HF entry (its layers size the KV cache)")
        if model.base and models[model.base].format != "hf":
            raise InputError("invalid_field", origin[model.key], f"models.{model.key}.base",
                             f"base model {model.base!r} is not an HF entry", "point base at the HF model it quantises")
    return Catalog(models=models, engines=engines, sources=tuple(s for s, _ in layers), gpus=gpus,
                   calibration=calibration)
