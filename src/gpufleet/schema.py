"""The strategy and catalog schemas as JSON Schema (draft 2020-12), for editors and other tools.

Built from the tables the validators read (gpufleet.strategy, gpufleet.catalog, gpufleet.label_selectors,
gpufleet.engine_args): a key, an engine argument, an enum value or a bound added there appears here too.
What a schema cannot say (one field compared with another, unique service names, what the planner
checks against the cluster) stays with the validators: a file the schema accepts may still be refused,
never the other way round for the shipped files (tests/test_schema.py).

The generated files ship in the package: strategies/strategy.schema.json (beside the strategies, so
their `# yaml-language-server: $schema=strategy.schema.json` line works in the repository and in the
installed package alike) and src/gpufleet/catalog.schema.json (beside catalog.yml). `gpufleet schema
strategy|catalog` prints them; tests/test_schema.py fails when a file differs from what this module
builds (write them again with `PYTHONPATH=src python -m gpufleet.schema`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from . import catalog as cat
from . import content, engine_args, label_selectors
from . import strategy as st

DIALECT = "https://json-schema.org/draft/2020-12/schema"
KINDS = ("strategy", "catalog")
FILES = {"strategy": content.root() / "strategies" / "strategy.schema.json",
         "catalog": Path(__file__).resolve().parent / "catalog.schema.json"}


def pattern(regex) -> str:
    """A Python fullmatch regex as a JSON Schema pattern. JSON Schema patterns are ECMA 262 regexes,
    searched (not matched): anchored with ^ and, at the end, a lookahead for "no character left",
    because `$` in Python (which the jsonschema package uses) also matches before a trailing newline.
    Both dialects read (?:...), (?![\\s\\S]) and the classes used here the same way."""
    text = regex.pattern if isinstance(regex, re.Pattern) else regex
    text = text.removesuffix(r"\Z")
    return rf"^(?:{text})(?![\s\S])"


def _refuse(regex) -> dict:
    """A string in which `regex` finds nothing."""
    return {"not": {"pattern": regex.pattern if isinstance(regex, re.Pattern) else regex}}


TEXT = {"type": "string", "maxLength": st.MAX_TEXT, **_refuse(st.CONTROL_RE)}


def _typed(kind) -> dict:
    """strategy._typed's kinds: bools are not numbers, numbers are bounded, text is one line."""
    if kind is int:
        return {"type": "integer", "exclusiveMinimum": -st.INT_LIMIT, "exclusiveMaximum": st.INT_LIMIT}
    if kind is float:
        return {"type": "number", "exclusiveMinimum": -st.FLOAT_LIMIT, "exclusiveMaximum": st.FLOAT_LIMIT}
    if kind is str:
        return dict(TEXT)
    if kind is bool:
        return {"type": "boolean"}
    if kind is dict:
        return {"type": "object"}
    raise TypeError(kind)


def _mm_limits() -> dict:
    """strategy._mm_limits: modality -> a count, or a mapping of that modality's options."""
    def options(allowed):
        return {"type": "object", "additionalProperties": False,
                "properties": {key: {"type": "integer", "minimum": 0 if key == "count" else 1,
                                     "maximum": st.MM_LIMIT} for key in allowed}}

    def limit(allowed):
        return {"oneOf": [{"type": "integer", "minimum": 0, "maximum": st.MM_LIMIT}, options(allowed)]}

    return {"type": "object", "propertyNames": {"pattern": pattern(st.MODALITY_RE)},
            "properties": {modality: limit(allowed) for modality, allowed in st.MM_OPTIONS.items()},
            "additionalProperties": limit(("count",))}


def _engine_args(engine: str) -> dict:
    known = st.VLLM_ARGS if engine == "vllm" else st.OLLAMA_ARGS
    properties = {}
    for key, kind in known.items():
        spec = _typed(kind)
        if key in st.POSITIVE_ARGS:
            spec["minimum"] = 1
        if engine == "vllm" and key in st.VLLM_VALUES:
            spec["enum"] = list(st.VLLM_VALUES[key])
        if key in engine_args.FROM_PLAN.get(engine, {}):
            spec["enum"] = [engine_args.PLANNED_VALUE]
        properties[key] = spec
    if engine == "vllm":
        properties["gpu_memory_utilization"].update(exclusiveMinimum=0, maximum=1)
        properties["limit_mm_per_prompt"] = _mm_limits()
    else:
        properties["kv_cache_type"]["enum"] = list(st.OLLAMA_KV_CACHE_TYPES)
        properties["keep_alive"]["pattern"] = pattern(st.OLLAMA_DURATION_RE)
    return {"type": ["object", "null"], "additionalProperties": False, "properties": properties}


def _replicas() -> dict:
    count = {"type": "integer", "minimum": 0, "maximum": st.MAX_REPLICAS}
    autoscaling = {"min": count, "max": {**count, "minimum": 1}, "initial": count,
                   "target_ongoing_requests": {**_typed(float), "exclusiveMinimum": 0},
                   "idle_unload_s": {"type": "integer", "minimum": 1, "maximum": st.MAX_IDLE_UNLOAD_S,
                                     "description": f"with min 0: unload after this many idle seconds "
                                                    f"(default {st.DEFAULT_IDLE_UNLOAD_S}, with idle: sleep "
                                                    f"{st.DEFAULT_IDLE_UNLOAD_WHEN_SLEEPING_S})"},
                   "idle": {"enum": list(st.IDLE_ACTIONS),
                            "description": "with min 0: unload (default), or sleep first (vLLM sleep mode, GPU only)"},
                   "idle_sleep_s": {"type": "integer", "minimum": 1, "maximum": st.MAX_IDLE_UNLOAD_S,
                                    "description": f"with idle: sleep: sleep after this many idle seconds, less "
                                                   f"than idle_unload_s (default {st.DEFAULT_IDLE_SLEEP_S})"}}
    assert set(autoscaling) == set(st.REPLICAS_KEYS)
    return {"oneOf": [
        {"type": "integer", "minimum": 1, "maximum": st.MAX_REPLICAS, "description": "a fixed count"},
        {"type": "object", "description": "autoscaling: min <= initial <= max",
         "additionalProperties": False, "required": ["max"],
         "properties": {key: autoscaling[key] for key in st.REPLICAS_KEYS}}]}


def _label_selector() -> dict:
    """label_selectors.parse_term: a key, and a value "v", "!v", "in(a,b)" or "!in(a,b)"."""
    name = label_selectors._NAME
    value = rf"!?(?:{name}|in\({name}(?:,{name})*\))"
    return {"type": ["object", "null"],
            "propertyNames": {"pattern": pattern(label_selectors.KEY_RE), "maxLength": 317},
            "additionalProperties": {"type": "string", "pattern": pattern(value)}}


def _placement() -> dict:
    properties = {
        "label_selector": _label_selector(),
        "host": {"type": ["string", "null"], "minLength": 1, "pattern": pattern(label_selectors.VALUE_RE),
                 "description": "an inventory host name (the Ray label gpufleet.io/host)"},
        "gpus": {"type": ["array", "null"], "minItems": 1, "uniqueItems": True,
                 "items": {"type": "integer", "minimum": 0},  # the planner refuses a negative index (exit 3)
                 "description": "GPU indices (Ollama services only)"},
    }
    assert set(properties) == set(st.PLACEMENT_KEYS)
    return {"type": ["object", "null"], "additionalProperties": False,
            "properties": {key: properties[key] for key in st.PLACEMENT_KEYS}}


def _when_engine(engine: str, then: dict) -> dict:
    return {"if": {"properties": {"engine": {"const": engine}}, "required": ["engine"]}, "then": then}


def _service() -> dict:
    properties = {
        "name": {"type": "string", "pattern": pattern(st.NAME_RE),
                 "description": "a lowercase DNS-style name, unique in the file"},
        "model": {**TEXT, "minLength": 1, "description": "a catalog key"},
        "engine": {"enum": list(st.ENGINES)},
        "engine_args": {"type": ["object", "null"]},
        "replicas": _replicas(),
        "placement": _placement(),
        "route": {"type": ["object", "null"], "additionalProperties": False,
                  "dependentRequired": {"priority": ["domain"]}, "properties": {
            "model_name": {"type": "string", "pattern": pattern(st.ROUTE_RE), "not": {"const": st.AUTO_MODEL}},
            "domain": {"type": ["string", "null"], "pattern": pattern(st.DOMAIN_RE),
                       "description": "a key of routing.domains: requests without a model that fit it come here"},
            "priority": {"type": "integer", "minimum": 0, "maximum": st.MAX_PRIORITY,
                         "description": "the higher wins when services fit a prompt alike"},
            "fallback": {"type": ["array", "null"], "uniqueItems": True,
                         "items": {"type": "string", "pattern": pattern(st.ROUTE_RE), "not": {"const": st.AUTO_MODEL}},
                         "description": "model names tried in order when this one cannot take a request"}}},
        "model_source": {**TEXT, "type": ["string", "null"], "minLength": 1,
                         "description": "a path on the nodes or a hub id"},
    }
    assert set(properties) == st.SERVICE_KEYS and set(properties["route"]["properties"]) == set(st.ROUTE_KEYS)
    return {
        "type": "object", "additionalProperties": False, "required": ["name", "model", "engine"],
        "properties": {key: properties[key] for key in sorted(st.SERVICE_KEYS)},
        "allOf": [
            _when_engine("vllm", {"properties": {
                "engine_args": {"$ref": "#/$defs/vllm_args"},
                "placement": {"properties": {"gpus": {"type": "null"}}}}}),
            _when_engine("ollama", {"required": ["placement"], "properties": {
                "engine_args": {"$ref": "#/$defs/ollama_args"},
                "replicas": {"const": 1},
                "placement": {"type": "object", "required": ["host", "gpus"], "properties": {
                    "host": {"type": "string"}, "gpus": {"type": "array"},
                    "label_selector": {"type": ["object", "null"], "maxProperties": 0}}}}}),
        ],
    }


def strategy_schema() -> dict:
    properties = {
        "name": {"type": "string", "pattern": pattern(st.NAME_RE), "description": "the file's name, without .yml"},
        # the validator strips the description first: a block scalar's trailing newline is allowed
        "description": {"type": "string", **_refuse(st.CONTROL_RE.pattern + r"(?=[\s\S]*\S)")},
        "services": {"type": "array", "minItems": 1, "maxItems": st.MAX_SERVICES,
                     "items": {"$ref": "#/$defs/service"}},
        "max_loaded_models": {"type": "integer", "minimum": 1, "maximum": st.MAX_SERVICES,
                              "description": "at most this many services with replicas.min 0 loaded at once"},
        "routing": {"type": ["object", "null"], "additionalProperties": False,
                    "required": ["embedding_model", "default_model", "domains"],
                    "description": "routing by content of requests without a model (README.md)",
                    "properties": {
                        "embedding_model": {"type": "string", "pattern": pattern(st.ROUTE_RE)},
                        "default_model": {"type": "string", "pattern": pattern(st.ROUTE_RE)},
                        "min_score": {"type": "number", "minimum": -1, "maximum": 1},
                        "domains": {"type": "object", "minProperties": 1,
                                    "propertyNames": {"pattern": pattern(st.DOMAIN_RE)},
                                    "additionalProperties": {"type": "array", "minItems": 1,
                                                             "maxItems": st.MAX_EXAMPLES,
                                                             "items": {**TEXT, "pattern": r"\S"}}}}},
    }
    assert set(properties) == set(st.STRATEGY_KEYS)
    return {
        "$schema": DIALECT,
        "$id": "https://gpufleet.invalid/schema/strategy.json",
        "title": "gpufleet strategy",
        "description": "A named list of services, each a model on an engine, placed and routed (README.md).",
        "type": "object", "additionalProperties": False, "required": ["name", "services"],
        "properties": {key: properties[key] for key in st.STRATEGY_KEYS},
        "$defs": {"service": _service(), "vllm_args": _engine_args("vllm"),
                  "ollama_args": _engine_args("ollama")},
    }


def _count(minimum: int) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": cat.MAX_INT}


def _model() -> dict:
    properties = {}
    for name, spec in cat.Model.__dataclass_fields__.items():
        if name == "key":
            continue
        if spec.type in ("int", "int | None"):
            properties[name] = _count(1 if name in cat.POSITIVE_FIELDS else 0)
            if spec.type == "int | None":
                properties[name]["type"] = ["integer", "null"]
        elif name in cat.NAME_FIELDS:
            properties[name] = {"type": ["string", "null"], "minLength": 1, "maxLength": cat.MAX_NAME,
                                **_refuse(cat.NAME_FORBIDDEN_RE)}
        elif name == "format":
            properties[name] = {"enum": list(cat.FORMATS)}
        elif name == "runner":
            properties[name] = {"enum": list(cat.RUNNERS)}
        elif name == "weights_bytes":
            properties[name] = {"type": "object", "propertyNames": {"enum": list(cat.DTYPE_BYTES)},
                                "additionalProperties": _count(1), "description": "bytes per dtype"}
        else:
            raise TypeError(f"catalog field {name}: no JSON Schema for {spec.type}")
    for name in cat.EXTRA_FIELDS:
        properties[name] = {"type": "number", "minimum": 0, "maximum": cat.MAX_INT}
    hf = {"required": list(cat._HF_FIELDS), "properties": {
        "weights_bytes": {"minProperties": 1}, "base": {"type": "null"},
        **{f: {"minimum": 1} for f in cat._HF_FIELDS if f != "weights_bytes"}}}
    gguf = {"required": list(cat.GGUF_FIELDS), "properties": {"ollama_tag": {"type": "string"}},
            # the KV cache is sized from the base model's layers, or the entry's own
            "anyOf": [{"required": ["base"], "properties": {"base": {"type": "string"}}},
                      {"required": list(cat._ARCH_FIELDS)}]}
    return {
        "type": "object", "additionalProperties": False, "required": ["format"],
        "properties": properties,
        "allOf": [
            {"if": {"properties": {"format": {"const": "hf"}}}, "then": hf},
            {"if": {"properties": {"format": {"const": "gguf"}}}, "then": gguf},
            {"if": {"required": ["sliding_layers"], "properties": {"sliding_layers": {"minimum": 1}}},
             "then": {"required": ["sliding_window"], "properties": {"sliding_window": {"type": "integer"}}}},
        ],
    }


def catalog_schema() -> dict:
    number = {"type": "number", "minimum": 0, "maximum": cat.MAX_INT}
    properties = {
        "models": {"type": ["object", "null"], "propertyNames": {"pattern": pattern(cat.MODEL_KEY_RE)},
                   "additionalProperties": {"$ref": "#/$defs/model"}},
        "engines": {"type": ["object", "null"], "propertyNames": {"enum": list(cat.ENGINES)},
                    "additionalProperties": {"type": ["object", "null"], "additionalProperties": number,
                                             "properties": {n: _count(1) for n in cat._ENGINE_COUNTS}}},
        "gpus": {"type": ["object", "null"], "description": "GPU model -> facts, such as reserved_mib",
                 "additionalProperties": {"type": "object", "additionalProperties": {"type": "number",
                                                                                     "minimum": 0}}},
        "calibration": {"type": ["object", "null"], "description": "engine -> model -> device -> figures",
                        "propertyNames": {"enum": list(cat.ENGINES)},
                        "additionalProperties": {"type": "object", "additionalProperties": {
                            "type": "object", "additionalProperties": {
                                "type": "object", "additionalProperties": False, "required": ["overhead_mib"],
                                "properties": {"overhead_mib": number}}}}},
    }
    assert set(properties) == set(cat.CATALOG_KEYS)
    return {
        "$schema": DIALECT,
        "$id": "https://gpufleet.invalid/schema/catalog.json",
        "title": "gpufleet model catalog",
        "description": "Sizes and shapes of models, the engines' constants, GPU facts and measured overheads.",
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {key: properties[key] for key in cat.CATALOG_KEYS},
        "$defs": {"model": _model()},
    }


def schema(kind: str) -> dict:
    return {"strategy": strategy_schema, "catalog": catalog_schema}[kind]()


def text(kind: str) -> str:
    """The schema as the shipped file holds it."""
    return json.dumps(schema(kind), indent=2, ensure_ascii=False) + "\n"


def write() -> list:
    """Write the shipped schema files (after a change to the tables they come from)."""
    for kind, path in FILES.items():
        path.write_text(text(kind), encoding="utf-8")
    return list(FILES.values())


if __name__ == "__main__":
    for written in write():
        print(written)
