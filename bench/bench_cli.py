"""`gpufleet plan` as a whole process: start-up, imports, Ansible reading the inventory, planning, printing, exit.

    .venv/bin/python bench/bench_cli.py                                  # 20 runs on inventory/production, baseline
    .venv/bin/python bench/bench_cli.py --baseline /tmp/before/src       # and the same command on another tree

Each run starts `python -m gpufleet plan -i INVENTORY -s STRATEGY` (the console script does the same)
with its output thrown away; with --baseline the two commands alternate (A B A B ...), the second with
PYTHONPATH=SRC, so a machine that slows down during the call slows both. Reported: wall time
(time.perf_counter around the child) and CPU time (the child's user + system, from the OS) as
min / median / max, and the ratio of the medians. Touches no host. Results go in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def once(command: list, env: dict) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def line(name: str, values: list) -> str:
    return (f"{name:<22} min {min(values) * 1000:7.1f} ms   median {statistics.median(values) * 1000:7.1f} ms   "
            f"max {max(values) * 1000:7.1f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", default="inventory/production")
    parser.add_argument("-s", "--strategy", default="baseline")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline", metavar="SRC", help="also run the gpufleet in SRC (PYTHONPATH=SRC)")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "gpufleet", "plan", "-i", args.inventory, "-s", args.strategy]
    sides = {"now": {**os.environ, "PYTHONPATH": str(ROOT / "src")}}
    if args.baseline:
        sides["baseline"] = {**os.environ, "PYTHONPATH": args.baseline}
    for env in sides.values():  # warm-up, not counted (page cache, the routing cache written once)
        once(command, env)
    results = {name: ([], []) for name in sides}
    for _ in range(args.runs):
        for name, env in sides.items():
            wall, cpu = once(command, env)
            results[name][0].append(wall)
            results[name][1].append(cpu)
    print(f"{' '.join(command[1:])}: {args.runs} runs each, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for name, (walls, cpus) in results.items():
        print(line(f"{name} wall", walls))
        print(line(f"{name} CPU", cpus))
    if args.baseline:
        for i, label in ((0, "wall"), (1, "CPU")):
            ratio = statistics.median(results["now"][i]) / statistics.median(results["baseline"][i])
            print(f"now / baseline, median {label}: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
