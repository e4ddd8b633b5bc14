"""The model catalog: sizes and shapes of models, and the engines' constant overheads."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import InputError

BUILTIN_CATALOG = "catalog.yml"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}

_HF_FIELDS = ("weights_bytes", "layers", "attention_heads", "kv_heads", "head_dim",
              "hidden_size", "intermediate_size", "vocab_size", "max_context")


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


def _read_yaml(path: Path | str, text: str | None = None) -> dict:
    try:
        data = yaml.safe_load(text if text is not None else Path(path).read_text())
    except OSError as exc:
        raise InputError("invalid_field", str(path), "-", f"cannot read the catalog: {exc.strerror}",
                         "check the path given with --catalog / gpufleet_catalog_files")
    except yaml.YAMLError as exc:
        raise InputError("invalid_field", str(path), "-", f"malformed YAML: {exc}", "fix the YAML syntax")
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise InputError("invalid_field", str(path), "models",
                         "a catalog is a mapping with a `models:` mapping", "see src/gpufleet/catalog.yml")
    return data


def _model(key: str, entry, source: str) -> Model:
    where = f"models.{key}"
    if not isinstance(entry, dict):
        raise InputError("invalid_field", source, where, "an entry is a mapping of fields",
                         "see the field list at the top of src/gpufleet/catalog.yml")
    fmt = entry.get("format")
    if fmt not in ("hf", "gguf"):
        raise InputError("invalid_field", source, f"{where}.format", f"is {fmt!r}", "use hf or gguf")
    known = set(Model.__dataclass_fields__) - {"key"}
    unknown = sorted(set(entry) - known - {"params_b"})
    if unknown:
        raise InputError("invalid_field", source, f"{where}.{unknown[0]}", "is not a catalog field",
                         f"remove it; known fields: {', '.join(sorted(known))}")
    required = _HF_FIELDS if fmt == "hf" else ("ollama_tag", "size_bytes")
    for name in required:
        value = entry.get(name)
        ok = isinstance(value, dict) and value if name == "weights_bytes" else (
            isinstance(value, int) and value > 0 if name != "ollama_tag" else isinstance(value, str) and value)
        if not ok:
            raise InputError("invalid_field", source, f"{where}.{name}", f"is missing or invalid ({value!r})",
                             "give a positive integer (weights_bytes: {dtype: bytes}; ollama_tag: a string)")
    values = {k: v for k, v in entry.items() if k in known}
    return Model(key=key, **values)


def load_catalog(extra_files=()) -> Catalog:
    """The built-in catalog, then each extra file in order (later entries replace earlier ones)."""
    builtin = resources.files("gpufleet").joinpath(BUILTIN_CATALOG)
    layers = [(str(builtin), _read_yaml(builtin, builtin.read_text()))]
    layers += [(str(p), _read_yaml(p)) for p in extra_files]
    models, engines, gpus = {}, {}, {}
    for source, data in layers:
        for gpu, facts in (data.get("gpus") or {}).items():
            if not isinstance(facts, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                                                  for v in facts.values()):
                raise InputError("invalid_field", source, f"gpus.{gpu}", "must map fact names to numbers >= 0",
                                 "for example gpus: {A10: {reserved_mib: 513}}")
            gpus.setdefault(str(gpu), {}).update(facts)
        for key, entry in (data.get("models") or {}).items():
            models[key] = _model(str(key), entry, source)
        for engine, constants in (data.get("engines") or {}).items():
            engines.setdefault(engine, {}).update(constants or {})
    for model in models.values():
        if model.base and model.base not in models:
            raise InputError("unknown_model", model.key, "base", f"base model {model.base!r} is not in the catalog",
                             "add the base model's HF entry (its layers size the KV cache)")
    return Catalog(models=models, engines=engines, sources=tuple(s for s, _ in layers), gpus=gpus)
