"""nvidia-smi's answers (`--query-gpu=FIELDS --format=csv,noheader,nounits`), read one way for the
GPU preflight (through the `gpufleet_nvidia_smi` filter) and for `gpufleet status`."""
from __future__ import annotations

# The queries gpufleet runs, and the key each field is read into.
IDENTITY = "index,uuid,name,memory.total"
MEMORY = "index,memory.total,memory.reserved,memory.used,memory.free"
MEMORY_OLD_DRIVER = "index,memory.total,memory.used,memory.free"  # no memory.reserved before R530 or so
STATUS = "index,uuid,name,memory.total,memory.used"
KEYS = {"index": "index", "uuid": "uuid", "name": "name", "memory.total": "memory_mib",
        "memory.reserved": "reserved_mib", "memory.used": "used_mib", "memory.free": "free_mib"}


def parse(text, fields: str, strict: bool = True) -> list[dict]:
    """One dict per GPU. TEXT is nvidia-smi's output or its lines. A driver without
    memory.reserved gives memory.total - used - free as reserved_mib (what CUDA cannot see).
    strict: a malformed line raises ValueError; otherwise it is skipped."""
    names = fields.split(",")
    lines = text.splitlines() if isinstance(text, str) else list(text or [])
    gpus = []
    for line in lines:
        if not str(line).strip():
            continue
        cells = [c.strip() for c in str(line).split(",")]
        try:
            if len(cells) != len(names):
                raise ValueError(f"{len(cells)} fields where {len(names)} were asked for")
            gpu = {KEYS[n]: (c if n in ("uuid", "name") else int(float(c))) for n, c in zip(names, cells, strict=True)}
        except ValueError as exc:
            if strict:
                raise ValueError(f"unexpected nvidia-smi line {line!r} for {fields}: {exc}") from None
            continue
        if "reserved_mib" not in gpu and {"memory_mib", "used_mib", "free_mib"} <= set(gpu):
            gpu["reserved_mib"] = gpu["memory_mib"] - gpu["used_mib"] - gpu["free_mib"]
        gpus.append(gpu)
    return gpus
