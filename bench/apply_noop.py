"""A no-op `gpufleet apply` on the sandbox, both sides of one comparison in one run:

    .venv/bin/python bench/apply_noop.py [-i inventory/sandbox] [-s sandbox] [--runs 2] [--compare connection]
    .venv/bin/python bench/apply_noop.py --compare ray-skip

--compare connection: over SSH (the sandbox inventory's connection) against the same apply over the
podman connection (`podman exec`, no pipelining). The podman side is a copy of the inventory in a
temporary folder whose group_vars reach the containers with `containers.podman.podman` instead,
with the endpoint's API key of the original inventory (so that the router's config is the same;
the copy is removed at the end).
--compare ray-skip: the Ray play ending on each node whose Ray inputs did not change
(roles/ray/tasks/unchanged.yml) against the whole Ray role (`-e ray_skip_unchanged=false`).

Each side first converges with one apply (not counted), then runs `gpufleet apply --yes` RUNS times
as a process and reports its wall time and the play times the runner's events give
(bench/apply_profile.py). Prints a table and the ratio, and the JSON with --json. Sends nothing
beyond the sandbox containers.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apply_profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from gpufleet import endpoint_key  # noqa: E402


def podman_inventory(inventory: str, folder: Path) -> str:
    """A copy of the inventory whose nodes are reached with `podman exec` (the connection the
    sandbox used before SSH), with the original's API key."""
    copy = folder / Path(inventory).name
    shutil.copytree(REPO / inventory, copy)
    group_vars = copy / "group_vars" / "all.yml"
    text = re.sub(r"(?m)^ansible_(connection|host|user|ssh_private_key_file|ssh_common_args):.*\n", "",
                  group_vars.read_text())
    key = endpoint_key.read_key(str(REPO / inventory))
    group_vars.write_text(text + f"ansible_connection: containers.podman.podman\nserve_api_key: {json.dumps(key)}\n")
    group_vars.chmod(0o600)
    return str(copy)


def apply(inventory: str, strategy: str, extra: list) -> dict:
    started = time.monotonic()
    run = subprocess.run([str(REPO / ".venv" / "bin" / "gpufleet"), "apply", "-i", inventory, "-s", strategy,
                          "--yes", *extra], cwd=REPO, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"apply failed (rc {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-2000:]}")
    changed = [line.strip() for line in run.stdout.splitlines() if "changed=" in line and "changed=0" not in line]
    profile = apply_profile.profile(apply_profile.latest("apply"))
    return {"seconds": round(seconds, 1), "tasks": len(profile["tasks"]), "changed": changed,
            "plays": {p["play"]: round(p["seconds"], 1) for p in profile["plays"] if p["seconds"] >= 0.5}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", default="inventory/sandbox")
    parser.add_argument("-s", "--strategy", default="sandbox")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--compare", choices=("connection", "ray-skip"), default="connection")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    try:
        if args.compare == "connection":
            sides = {"ssh": (args.inventory, []), "podman": (podman_inventory(args.inventory, folder), [])}
        else:
            sides = {"skip": (args.inventory, []), "full": (args.inventory, ["-e", "ray_skip_unchanged=false"])}
        results = {}
        for side, (inventory, extra) in sides.items():
            apply(inventory, args.strategy, extra)  # converge first: what follows must be a no-op
            results[side] = [apply(inventory, args.strategy, extra) for _ in range(args.runs)]
    finally:
        shutil.rmtree(folder)
    medians = {side: statistics.median(r["seconds"] for r in runs) for side, runs in results.items()}
    if args.json:
        print(json.dumps({"runs": results, "median_s": medians}, indent=1))
        return 0
    for side, runs in results.items():
        print(f"{side:7s} " + ", ".join(f"{r['seconds']:.1f} s" for r in runs)
              + f"  (median {medians[side]:.1f} s, {runs[0]['tasks']} tasks; plays {runs[-1]['plays']})")
        for r in runs:
            if r["changed"]:
                print(f"        not a no-op: {r['changed']}")
    first, second = medians
    print(f"{first} / {second}: {medians[first] / medians[second]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
