"""gpufleet.nvidia_smi, the one reader of nvidia-smi's CSV (preflight filter and status)."""
from __future__ import annotations

import pytest

from gpufleet import nvidia_smi


def test_identity_rows():
    text = "0, GPU-aaa, NVIDIA A10, 23028\n1, GPU-bbb, NVIDIA A10, 23028\n"
    assert nvidia_smi.parse(text, nvidia_smi.IDENTITY) == [
        {"index": 0, "uuid": "GPU-aaa", "name": "NVIDIA A10", "memory_mib": 23028},
        {"index": 1, "uuid": "GPU-bbb", "name": "NVIDIA A10", "memory_mib": 23028}]


def test_reserved_read_or_derived_for_older_drivers():
    # seed 002: used + free = 22515 of 23028 on every A10
    assert nvidia_smi.parse("0, 23028, 513, 20730, 1785", nvidia_smi.MEMORY)[0]["reserved_mib"] == 513
    assert nvidia_smi.parse("0, 23028, 20730, 1785", nvidia_smi.MEMORY_OLD_DRIVER)[0]["reserved_mib"] == 513


def test_a_malformed_line_raises_or_is_skipped():
    rows = ["0, GPU-aaa, NVIDIA A10, 23028, 21000", "[N/A]", "1, GPU-bbb, NVIDIA A10, 23028, x"]
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        nvidia_smi.parse(rows, nvidia_smi.STATUS)
    assert [g["index"] for g in nvidia_smi.parse(rows, nvidia_smi.STATUS, strict=False)] == [0]
