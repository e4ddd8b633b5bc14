"""A cold `make demo`, as a new user runs it on a fresh machine, for two commits in one run:

    .venv/bin/python bench/cold_demo.py BEFORE AFTER [--repo /work/main] [--work /tmp/gpufleet-cold]

For each commit in turn: the sandbox is removed, the commit is cloned into an empty folder, the
sandbox node image is removed (podman rmi) and `make demo` runs with an empty GPUFLEET_CACHE and no
pip cache (PIP_NO_CACHE_DIR=1), its output timestamped; then the sandbox is removed again. Prints
each side's wall time, its phases (assets until `sandbox_up.yml`, the containers until `gpufleet
apply`, the apply until the smoke test, the smoke test) and the ratio; --json for the figures.
Machine-wide package settings (pip's configuration, /opt/wheels for the CPU torch) are the
machine's and are kept. Each side's clone and cache are removed after it (its log is kept in the
work folder). Needs the sandbox to itself (hold /work/sandbox.lock or the like); takes about 20 min.
Sends nothing beyond the package registries and the sandbox containers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MARKERS = (("assets", "sandbox assets:"), ("containers", "playbooks/sandbox_up.yml"),
           ("apply", "gpufleet apply -i inventory/sandbox"), ("smoke", "-m gpufleet.smoke"))


def sandbox_down(clone: Path, env: dict) -> None:
    for _ in range(2):  # sandbox_down.yml can fail once while Ray stops; a second run finishes it
        if subprocess.run([str(clone / ".venv/bin/ansible-playbook"), "playbooks/sandbox_down.yml"],
                          cwd=clone, env=env, capture_output=True).returncode == 0:
            return
    raise SystemExit(f"sandbox_down.yml failed twice in {clone}")


def remove_node_images() -> None:
    images = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, check=True).stdout.split()
    for image in images:
        if "gpufleet-node" in image:
            subprocess.run(["podman", "rmi", "-f", image], capture_output=True, check=True)


def cold_demo(repo: Path, commit: str, work: Path) -> dict:
    clone, cache = work / f"clone-{commit}", work / f"cache-{commit}"
    shutil.rmtree(clone, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", commit], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ANSIBLE_CONFIG", "VIRTUAL_ENV", "GPUFLEET_TEST_TIMES")}
    env.update(GPUFLEET_CACHE=str(cache), PIP_NO_CACHE_DIR="1")
    if (repo / ".venv/bin/ansible-playbook").exists():  # a sandbox left by anyone: removed first
        sandbox_down(repo, dict(os.environ))
    remove_node_images()
    started = time.monotonic()
    lines = []
    with subprocess.Popen(["make", "demo"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as make:
        for line in make.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
    total = time.monotonic() - started
    (work / f"make-demo-{commit}.log").write_text("".join(f"{t:8.1f} {line}\n" for t, line in lines))
    if (clone / ".venv/bin/ansible-playbook").exists():
        sandbox_down(clone, {**env, "ANSIBLE_CONFIG": str(clone / "ansible.cfg")})
    shutil.rmtree(clone, ignore_errors=True)  # 7 GB a side (the venv and the cache); the log stays
    shutil.rmtree(cache, ignore_errors=True)
    if make.returncode != 0:
        raise SystemExit(f"make demo failed at {commit} (rc {make.returncode}): "
                         + "\n".join(line for _, line in lines[-30:]))
    starts = {}
    for name, marker in MARKERS:
        starts[name] = next((t for t, line in lines if marker in line), None)
    phases, previous = {}, ("venv and host", 0.0)
    for name, _ in MARKERS:
        if starts[name] is not None:
            phases[previous[0]] = round(starts[name] - previous[1], 1)
            previous = (name, starts[name])
    phases[previous[0]] = round(total - previous[1], 1)
    return {"commit": commit, "seconds": round(total, 1), "phases": phases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpufleet-cold"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sides = [cold_demo(args.repo, commit, args.work) for commit in (args.before, args.after)]
    for side in sides:
        print(f"{side['commit']}: cold make demo {side['seconds']:.1f} s  "
              + ", ".join(f"{k} {v:.1f} s" for k, v in side["phases"].items()))
    print(f"ratio after/before: {sides[1]['seconds'] / sides[0]['seconds']:.3f}x")
    if args.json:
        print(json.dumps(sides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
