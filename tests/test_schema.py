"""The published JSON Schemas (gpufleet.schema; `gpufleet schema strategy|catalog`), issue 10 "One schema, published".

- The shipped schema files are what gpufleet.schema builds from the validators' tables (kept in sync here),
  and `gpufleet schema` prints them.
- Every shipped strategy and the built-in catalog validate against them, and each names its schema on its
  first line (`# yaml-language-server: $schema=...`, resolved here) for editors.
- tests/test_hostile.py's table, through the schema: every strategy or catalog case is either refused by the
  schema (at the field the CLI names) or listed below with why a schema cannot say it; its good inputs pass.
- More hostile cases the schema can express (unknown keys, wrong types, out-of-range numbers, trailing
  newlines, unknown engine, bad vLLM enum values), each refused by the schema and the validator alike, and
  valid variants both accept.
- The patterns mean the same as ECMA regexes (what editors run) as in Python: checked with node when present.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_hostile import CASES, run_cli, strategy_text, vllm

from gpufleet import schema, yamlfile
from gpufleet.catalog import _read_yaml
from gpufleet.errors import InputError
from gpufleet.label_selectors import SelectorError, parse_selector
from gpufleet.strategy import NAME_RE, ROUTE_RE, parse_strategy

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = sorted((REPO / "strategies").glob("*.yml"))
CATALOGS = [REPO / "src" / "gpufleet" / "catalog.yml"]
EDITOR_LINE = re.compile(r"# yaml-language-server: \$schema=(\S+)\n")


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema.schema(kind))


def errors(kind: str, data) -> list:
    return list(validator(kind).iter_errors(data))


# ---- the shipped files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", schema.KINDS)
def test_shipped_schema_file_is_the_generated_one(kind):
    """One definition: the shipped file is built from the validators' tables. After changing them:
    PYTHONPATH=src .venv/bin/python -m gpufleet.schema"""
    path = schema.FILES[kind]
    assert path.read_text(encoding="utf-8") == schema.text(kind), f"{path} is stale: run python -m gpufleet.schema"
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("kind", schema.KINDS)
def test_gpufleet_schema_prints_it(kind):
    rc, output = run_cli(["schema", kind])
    assert rc == 0
    assert json.loads(output) == schema.schema(kind) == json.loads(schema.FILES[kind].read_text(encoding="utf-8"))


def test_gpufleet_schema_refuses_another_kind():
    rc, output = run_cli(["schema", "inventory"])
    assert rc == 2 and "invalid choice" in output


@pytest.mark.parametrize("path", STRATEGIES + CATALOGS, ids=lambda p: p.name)
def test_shipped_file_validates_and_names_its_schema(path):
    kind = "catalog" if path in CATALOGS else "strategy"
    text = path.read_text(encoding="utf-8")
    line = EDITOR_LINE.match(text)
    assert line, f"{path}: the first line must be `# yaml-language-server: $schema=...` for editors"
    assert (path.parent / line.group(1)).resolve() == schema.FILES[kind].resolve()
    data = yamlfile.load_text(text, str(path))
    assert [e.message for e in errors(kind, data)] == []
    # and the validator agrees
    if kind == "strategy":
        parse_strategy(data, str(path), path.stem)
    else:
        _read_yaml(path)


def test_every_shipped_strategy_is_covered():
    assert len(STRATEGIES) >= 10


def test_the_schema_knows_every_field_the_validator_does():
    """Derived, not copied: the tables' keys are the schema's properties."""
    from gpufleet import strategy as st
    from gpufleet.catalog import EXTRA_FIELDS, Model
    strategy = schema.strategy_schema()
    service = strategy["$defs"]["service"]
    assert set(strategy["properties"]) == set(st.STRATEGY_KEYS)
    assert set(service["properties"]) == st.SERVICE_KEYS
    assert set(strategy["$defs"]["vllm_args"]["properties"]) == set(st.VLLM_ARGS)
    assert set(strategy["$defs"]["ollama_args"]["properties"]) == set(st.OLLAMA_ARGS)
    for key, values in st.VLLM_VALUES.items():
        assert strategy["$defs"]["vllm_args"]["properties"][key]["enum"] == list(values)
    model = schema.catalog_schema()["$defs"]["model"]
    assert set(model["properties"]) == set(Model.__dataclass_fields__) - {"key"} | set(EXTRA_FIELDS)


# ---- tests/test_hostile.py's table through the schema ---------------------------------------------------
# Strategy and catalog cases whose YAML loads but that no JSON Schema can refuse, and why.
NOT_EXPRESSIBLE = {
    "catalog: gguf base is another gguf": "compares one entry with another (base must be an HF entry)",
    "catalog: gguf base unknown": "compares one entry with the rest of the catalog, across files",
    "catalog: kv heads not dividing heads": "arithmetic between two fields",
    "catalog: sliding layers above layers": "compares two fields",
    "engine: replicas beyond the cluster": "depends on the inventory (exit 3, the planner's)",
    "engine: utilization nan": "JSON has no NaN, and a comparison with NaN is never false",
}
# Classes whose cases are the YAML reader's (refused before any schema could see the data) or the command line's
NOT_SCHEMA = {"cli", "inventory"}


def _inputs(case) -> list:
    """(kind, file, data) of the strategy or catalog files a case writes; data None when the YAML reader refuses."""
    found = []
    for rel, kind in (("strategies/t.yml", "strategy"), ("catalog.yml", "catalog")):
        if rel in case.files and (case.exit == 0 or case.file == rel):
            try:
                data = yamlfile.load_text(case.files[rel], rel)
            except InputError:
                data = None
            found.append((kind, rel, data))
    return found


def _path(where: str) -> str:
    """The CLI's field name as a JSON path: services[m].name -> services.0.name (one service per case)."""
    return re.sub(r"\[[^\]]*\]", ".0", where).replace("'", "")


SCHEMA_CASES = sorted(name for name, case in CASES.items()
                      if case.cls not in NOT_SCHEMA and any(d is not None for _, _, d in _inputs(case)))


def test_schema_cases_are_many_and_classified():
    assert len(SCHEMA_CASES) >= 50
    assert set(NOT_EXPRESSIBLE) <= set(SCHEMA_CASES), "a NOT_EXPRESSIBLE case is no longer in test_hostile's table"


@pytest.mark.parametrize("name", SCHEMA_CASES)
def test_hostile_case_through_the_schema(name):
    case = CASES[name]
    for kind, _rel, data in _inputs(case):
        if data is None:
            continue
        found = errors(kind, data)
        if case.exit == 0:
            assert found == [], f"{name}: the schema refuses a good input: {[e.message for e in found]}"
        elif name in NOT_EXPRESSIBLE:
            assert found == [], f"{name}: now refused by the schema; remove it from NOT_EXPRESSIBLE"
        else:
            assert found, f"{name}: accepted by the schema (refused by the CLI with exit {case.exit})"
            if case.where:
                where = _path(case.where)
                paths = [".".join(map(str, e.absolute_path)) for e in found]
                # the same field, or one holding it, or one inside it
                assert any(where == p or where.startswith(p + ".") or p.startswith(where + ".")
                           or (not p and "." not in where) for p in paths), \
                    f"{name}: refused at {paths}, the CLI names {case.where}"


# ---- more cases a schema expresses: the schema and the validator refuse each ------------------------------
def _strategy(**service) -> dict:
    return yaml.safe_load(strategy_text([vllm(**service)]))


def _ollama(**fields) -> dict:
    service = {"name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama",
               "placement": {"host": "node-0", "gpus": [3]}, **fields}
    return yaml.safe_load(strategy_text([service]))


def _set(data: dict, path: str, value) -> dict:
    """data with the value at a dotted path (services.0.engine_args.dtype) set, or deleted for DELETE."""
    data = copy.deepcopy(data)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()
BASE = _strategy()
REFUSED = {
    # unknown keys, at every level
    "unknown strategy key": _set(BASE, "servics", []),
    "unknown service key": _set(BASE, "services.0.replica", 2),
    "unknown vLLM argument": _set(BASE, "services.0.engine_args.gpu_util", 0.9),
    "an Ollama argument on vLLM": _set(BASE, "services.0.engine_args.num_parallel", 2),
    "a vLLM argument on Ollama": _ollama(engine_args={"max_model_len": 4096}),
    "unknown replicas key": _set(BASE, "services.0.replicas", {"max": 2, "maximum": 3}),
    "unknown placement key": _set(BASE, "services.0.placement", {"node": "node-0"}),
    "unknown route key": _set(BASE, "services.0.route", {"model_name": "m", "alias": "x"}),
    "unknown limit_mm option": _set(BASE, "services.0.engine_args.limit_mm_per_prompt", {"audio": {"width": 2}}),
    # missing what is required
    "no services": _set(BASE, "services", []),
    "no name": _set(BASE, "name", DELETE),
    "service without engine": _set(BASE, "services.0.engine", DELETE),
    "service without model": _set(BASE, "services.0.model", DELETE),
    "autoscaling without max": _set(BASE, "services.0.replicas", {"min": 1}),
    "Ollama without placement": _set(_ollama(), "services.0.placement", DELETE),
    "Ollama without gpus": _set(_ollama(), "services.0.placement.gpus", DELETE),
    # wrong types
    "replicas a string": _set(BASE, "services.0.replicas", "2"),
    "enforce_eager a string": _set(BASE, "services.0.engine_args.enforce_eager", "yes"),
    "max_model_len a float": _set(BASE, "services.0.engine_args.max_model_len", 4096.5),
    "max_model_len a bool": _set(BASE, "services.0.engine_args.max_model_len", True),
    "utilization a string": _set(BASE, "services.0.engine_args.gpu_memory_utilization", "0.9"),
    "engine_args a list": _set(BASE, "services.0.engine_args", ["dtype=auto"]),
    "services a mapping": _set(BASE, "services", {"m": vllm()}),
    "a service a string": _set(BASE, "services.0", "m"),
    "gpus a number": _set(_ollama(), "services.0.placement.gpus", 3),
    "description a list": _set(BASE, "description", ["a"]),
    "label value a number": _set(BASE, "services.0.placement", {"label_selector": {"gpufleet.io/pool": 3}}),
    # out of range
    "utilization 0": _set(BASE, "services.0.engine_args.gpu_memory_utilization", 0),
    "utilization 1.5": _set(BASE, "services.0.engine_args.gpu_memory_utilization", 1.5),
    "tensor_parallel_size 0": _set(BASE, "services.0.engine_args.tensor_parallel_size", 0),
    "max_num_seqs negative": _set(BASE, "services.0.engine_args.max_num_seqs", -1),
    "Ollama context_length 0": _ollama(engine_args={"context_length": 0}),
    "replicas 0": _set(BASE, "services.0.replicas", 0),
    "replicas 10001": _set(BASE, "services.0.replicas", 10_001),
    "target_ongoing_requests 0": _set(BASE, "services.0.replicas", {"max": 2, "target_ongoing_requests": 0}),
    "autoscaling min negative": _set(BASE, "services.0.replicas", {"min": -1, "max": 2}),
    "Ollama with 2 replicas": _ollama(replicas=2),
    "seed 2**60": _set(BASE, "services.0.engine_args.seed", 2**60),
    "gpus empty": _set(_ollama(), "services.0.placement.gpus", []),
    "gpus repeated": _set(_ollama(), "services.0.placement.gpus", [1, 1]),
    "gpus on a vLLM service": _set(BASE, "services.0.placement", {"host": "node-0", "gpus": [0]}),
    "label_selector on Ollama": _set(_ollama(), "services.0.placement.label_selector", {"gpufleet.io/pool": "a"}),
    # names and values: trailing newlines, lengths, characters
    "strategy name uppercase": _set(BASE, "name", "Baseline"),
    "strategy name with a leading dash": _set(BASE, "name", "-t"),
    "service name with trailing newline": _set(BASE, "services.0.name", "m\n"),
    "service name with trailing CRLF": _set(BASE, "services.0.name", "m\r\n"),
    "service name 64 chars": _set(BASE, "services.0.name", "m" * 64),
    "service name empty": _set(BASE, "services.0.name", ""),
    "route with trailing newline": _set(BASE, "services.0.route", {"model_name": "chat\n"}),
    "route 129 chars": _set(BASE, "services.0.route", {"model_name": "r" * 129}),
    "host with trailing newline": _set(_ollama(), "services.0.placement.host", "node-0\n"),
    "host empty": _set(_ollama(), "services.0.placement.host", ""),
    "selector value trailing newline in in()": _set(BASE, "services.0.placement",
                                                    {"label_selector": {"gpufleet.io/pool": "in(a,b\n)"}}),
    "selector in() with a space": _set(BASE, "services.0.placement",
                                       {"label_selector": {"gpufleet.io/pool": "in(a, b)"}}),
    "model empty": _set(BASE, "services.0.model", ""),
    "model 4097 chars": _set(BASE, "services.0.model", "m" * 4097),
    "tokenizer with a newline": _set(BASE, "services.0.engine_args.tokenizer", "t\n"),
    "keep_alive with trailing newline": _ollama(engine_args={"keep_alive": "5m\n"}),
    "description with an escape sequence": _set(BASE, "description", "\x1b[2Jx"),
    # engines and enum values
    "unknown engine": _set(BASE, "services.0.engine", "tgi"),
    "engine in capitals": _set(BASE, "services.0.engine", "VLLM"),
    "dtype fp16": _set(BASE, "services.0.engine_args.dtype", "fp16"),
    "kv_cache_dtype FP8": _set(BASE, "services.0.engine_args.kv_cache_dtype", "FP8"),
    "quantization fp8 with trailing newline": _set(BASE, "services.0.engine_args.quantization", "fp8\n"),
    "tokenizer_mode slow": _set(BASE, "services.0.engine_args.tokenizer_mode", "slow"),
    "kv_cache_memory_bytes a number": _set(BASE, "services.0.engine_args.kv_cache_memory_bytes", "4GiB"),
    "Ollama kv_cache_type q4_1": _ollama(engine_args={"kv_cache_type": "q4_1"}),
}
ACCEPTED = {
    "autoscaling": _set(BASE, "services.0.replicas", {"min": 0, "max": 15, "initial": 1, "target_ongoing_requests": 5}),
    "null engine_args, placement and route": _set(_set(_set(BASE, "services.0.engine_args", None),
                                                       "services.0.placement", None), "services.0.route", None),
    "every selector form": _set(BASE, "services.0.placement", {"label_selector": {
        "gpufleet.io/host": "!node-0", "gpufleet.io/pool": "in(a,b.c)", "zone": "!in(z-1)", "ray.io/region": "eu"}}),
    "host placement on vLLM": _set(BASE, "services.0.placement", {"host": "node-0"}),
    "kv_cache_memory_bytes planned": _set(BASE, "services.0.engine_args.kv_cache_memory_bytes", "planned"),
    "integer utilization 1": _set(BASE, "services.0.engine_args.gpu_memory_utilization", 1),
    "a block-scalar description (trailing newline)": _set(BASE, "description", "two words\n"),
    "route with a slash and a colon": _set(BASE, "services.0.route", {"model_name": "org/model:v1.2"}),
    "multimodal limits": _set(BASE, "services.0.engine_args.limit_mm_per_prompt",
                              {"image": {"count": 2, "width": 512}, "audio": 1, "molecule": {"count": 0}}),
    "Ollama with every argument": _ollama(engine_args={"context_length": 8192, "num_parallel": 2, "keep_alive": "-1",
                                                       "kv_cache_type": "q8_0", "flash_attention": True}),
    "Ollama keep_alive 1h30m": _ollama(engine_args={"keep_alive": "1h30m"}),
}


# label selectors are parsed by the planner (exit 3, selector_syntax), not by the strategy validator
SELECTOR_CASES = {"label value a number", "selector value trailing newline in in()", "selector in() with a space"}


def _validator_refuses(data) -> bool:
    try:
        parse_strategy(data, "t.yml")
    except InputError:
        return True
    return False


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_schema_refuses(name):
    data = REFUSED[name]
    assert errors("strategy", data), f"{name}: the schema accepts it"
    # the same rule, one definition: the validator refuses it too (label selectors: the planner's parser)
    if name in SELECTOR_CASES:
        with pytest.raises(SelectorError):
            parse_selector(data["services"][0]["placement"]["label_selector"])
    else:
        assert _validator_refuses(data), f"{name}: the validator accepts what the schema refuses"


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_schema_accepts(name):
    data = ACCEPTED[name]
    assert [e.message for e in errors("strategy", data)] == []
    parse_strategy(data, "t.yml")


CATALOG_REFUSED = {
    "unknown model field": {"models": {"acme/x": {"format": "hf", "layer": 3}}},
    "hf entry missing its architecture": {"models": {"acme/x": {"format": "hf", "weights_bytes": {"bfloat16": 1}}}},
    "hf entry with a base": {"models": {"acme/x": {"format": "hf", "base": "acme/y"}}},
    "unknown format": {"models": {"acme/x": {"format": "safetensors"}}},
    "model key with trailing newline": {"models": {"acme/x\n": {"format": "gguf"}}},
    "calibration of an unknown engine": {"calibration": {"tgi": {}}},
    "calibration without overhead_mib": {"calibration": {"vllm": {"acme/x": {"cpu": {"mib": 3}}}}},
    "calibration negative": {"calibration": {"vllm": {"acme/x": {"cpu": {"overhead_mib": -1}}}}},
    "gpu fact negative": {"gpus": {"A10": {"reserved_mib": -1}}},
    "empty catalog": {},
}


@pytest.mark.parametrize("name", sorted(CATALOG_REFUSED))
def test_catalog_schema_refuses(name, tmp_path):
    data = CATALOG_REFUSED[name]
    assert errors("catalog", data), f"{name}: the schema accepts it"
    from gpufleet.catalog import _model
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(InputError):
        _read_yaml(path)
        for key, entry in (data.get("models") or {}).items():
            _model(key, entry, str(path))


# ---- the patterns: \Z semantics, in Python (jsonschema) and in ECMA 262 (editors) --------------------------
def _patterns(node) -> list:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


ALL_PATTERNS = sorted({p for kind in schema.KINDS for p in _patterns(schema.schema(kind))})
# (pattern, a string it matches): with a trailing newline, or one inside, it must not match any more
SAMPLES = [(schema.pattern(NAME_RE), "medgemma-27b"), (schema.pattern(ROUTE_RE), "org/model:v1"),
           (schema.strategy_schema()["$defs"]["service"]["properties"]["placement"]["properties"]["host"]["pattern"],
            "node-0"),
           (schema.strategy_schema()["$defs"]["ollama_args"]["properties"]["keep_alive"]["pattern"], "1h30m")]


@pytest.mark.parametrize("regex, good", SAMPLES)
def test_a_trailing_newline_is_refused_in_python(regex, good):
    assert re.search(regex, good)
    for bad in (good + "\n", good + "\r\n", good + "\nx", "\n" + good):
        assert not re.search(regex, bad), repr(bad)


def test_patterns_mean_the_same_in_ecma_262():
    """Editors run the patterns as JavaScript regexes (`u` flag): each compiles there, and the samples
    match and refuse as in Python."""
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    script = ("const [patterns, samples] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "patterns.forEach(p => new RegExp(p, 'u'));"
              "console.log(JSON.stringify(samples.map(([p, s]) => new RegExp(p, 'u').test(s))));")
    samples = [(p, s) for p, good in SAMPLES for s in (good, good + "\n", good + "\r\n", good + "\nx")]
    result = subprocess.run([node, "-e", script], input=json.dumps([ALL_PATTERNS, samples]), capture_output=True,
                            text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == [bool(re.search(p, s)) for p, s in samples]
    assert json.loads(result.stdout) == [s == good for p, good in SAMPLES for s in
                                         (good, good + "\n", good + "\r\n", good + "\nx")]
