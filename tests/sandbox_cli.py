"""gpufleet's CLI as the sandbox tests call it: in process, its output captured."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from gpufleet.cli import main


def gpufleet(*argv: str) -> int:
    """Run one command, its output swallowed; its exit status."""
    with redirect_stdout(io.StringIO()):
        return main(list(argv))


def status(inventory: str) -> dict:
    """`gpufleet status --format json`, which must succeed."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", "-i", inventory, "--format", "json"]) == 0
    return json.loads(out.getvalue())


def ensure_applied(inventory: str, strategy: str = "sandbox") -> dict:
    """The strategy applied and running as planned: applied here only when status says otherwise."""
    data = status(inventory)
    if (data["applied"] or {}).get("strategy") != strategy or data["drift"]:
        assert gpufleet("apply", "-i", inventory, "-s", strategy, "--yes") == 0
        data = status(inventory)
    return data
