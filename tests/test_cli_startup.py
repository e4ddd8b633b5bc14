"""What `gpufleet plan` does to start faster changes nothing it reads (BENCHMARKS.md: `gpufleet plan`
as a whole process): Ansible's routing metadata from the cache equals Ansible's own parse, a cache
that cannot be used falls back to that parse, and a call in process leaves the collector as it was."""
from __future__ import annotations

import gc
import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import ansible
from ansible.utils.collection_loader import _collection_finder, _collection_meta

from gpufleet import inventory
from gpufleet.cli import main

REPO = Path(__file__).resolve().parents[1]
RUNTIME = Path(ansible.__file__).parent / "config" / "ansible_builtin_runtime.yml"


def test_cached_routing_is_ansibles_parse(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEET_CACHE", str(tmp_path))
    monkeypatch.setattr(_collection_finder, "_meta_yml_to_dict", _collection_meta._meta_yml_to_dict)
    inventory.cache_ansible_routing()
    cached = _collection_finder._meta_yml_to_dict
    assert cached is not _collection_meta._meta_yml_to_dict
    inventory.cache_ansible_routing()  # twice: wrapped once
    assert _collection_finder._meta_yml_to_dict is cached
    raw = RUNTIME.read_bytes()
    ansibles = _collection_meta._meta_yml_to_dict(raw, ("ansible.builtin", "runtime.yml"))
    assert cached(raw, ("ansible.builtin", "runtime.yml")) == ansibles  # parsed, then written
    files = list((tmp_path / "ansible-routing").glob("*.json"))
    assert len(files) == 1 and os.stat(files[0]).st_mode & 0o077 == 0
    assert cached(raw, ("ansible.builtin", "runtime.yml")) == ansibles  # read back
    files[0].write_text("{not json")
    assert cached(raw, ("ansible.builtin", "runtime.yml")) == ansibles  # a broken cache: parsed again


def test_unwritable_cache_falls_back(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GPUFLEET_CACHE", str(blocker))  # a file where the folder would be
    monkeypatch.setattr(_collection_finder, "_meta_yml_to_dict", _collection_meta._meta_yml_to_dict)
    inventory.cache_ansible_routing()
    assert _collection_finder._meta_yml_to_dict(b"plugin_routing: {}\n", None) == {"plugin_routing": {}}


def test_in_process_call_leaves_the_collector_alone():
    frozen = gc.get_freeze_count()
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(["plan", "-i", str(REPO / "inventory" / "production"), "-s", "baseline"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
