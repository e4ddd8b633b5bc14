"""plugins/filter/gpufleet_files.py: the folder digests that decide whether a role ships a folder
(model folders: size and mtime) or runs at all (the ray role's own files: their bytes)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpufleet_files_plugin", REPO / "plugins/filter/gpufleet_files.py")
files_plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files_plugin)
tree_digest = files_plugin.tree_digest


def folder(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.txt").write_text("beta")
    return root


def test_quick_digest_follows_mtime_and_size_not_bytes(tmp_path):
    root = folder(tmp_path)
    before = tree_digest(root)
    assert tree_digest(root) == before
    (root / "a.txt").write_text("ALPHA")  # same size, bytes changed, mtime kept
    os.utime(root / "a.txt", ns=(0, 0))
    kept = tree_digest(root)
    os.utime(root / "a.txt", ns=(0, 1))
    assert tree_digest(root) != kept
    (root / "c.txt").write_text("")
    assert tree_digest(root) != kept


def test_content_digest_follows_bytes_not_mtime(tmp_path):
    root = folder(tmp_path)
    before = tree_digest(root, True)
    os.utime(root / "a.txt", ns=(0, 0))
    assert tree_digest(root, True) == before
    (root / "sub" / "b.txt").write_text("BETA")
    assert tree_digest(root, True) != before
    (root / "sub" / "b.txt").write_text("beta")
    assert tree_digest(root, True) == before
    (root / "sub" / "b.txt").rename(root / "b.txt")  # the same bytes under another path
    assert tree_digest(root, True) != before


def test_not_a_folder(tmp_path):
    with pytest.raises(AnsibleFilterError, match="not a folder on the controller"):
        tree_digest(tmp_path / "missing")
