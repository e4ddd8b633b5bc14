"""Load an OpenAI-compatible endpoint with the `openai` client and account for every request.

    .venv/bin/python bench/load.py -i inventory/sandbox -s sandbox --concurrency 2 --duration 60 --json out.json
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000/v1 --chat-model chat --mix chat=3,stream=1

Bounded: at most --duration seconds (600 at most) and --max-requests requests; the client never
retries. SIGINT or SIGTERM ends a run early (the requests in flight finish, the summary is written).
Targets are limited to loopback and the sandbox's own network (playbooks/sandbox_up.yml):
anything else is refused before a request is sent. Prints requests, failures by cause, p50/p99
latency (and time to first token for streams) and the longest stall: the longest time in which no
request completed successfully. --json writes every request's outcome and latency.

The API key: --api-key, else $GPUFLEET_API_KEY, else (with -i) the key the first apply made for that
inventory (gpufleet.endpoint_key). Prefer the environment: a command line shows in `ps`.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
                    ipaddress.ip_network("10.89.0.0/24"))  # the sandbox network, playbooks/sandbox_up.yml
MAX_DURATION_S = 600
KINDS = ("chat", "stream", "embed")


@dataclass
class Outcome:
    kind: str
    start_s: float  # since the run started
    latency_s: float
    ok: bool
    cause: str = ""  # why it failed: http-503, timeout, connection, empty, ...
    ttft_s: float | None = None  # streams: time to the first content chunk
    tokens: int = 0  # streamed content chunks, or completion tokens


def check_target(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise SystemExit(f"load: cannot resolve {host!r}: {exc}") from None
    outside = [a for a in addresses if not any(ipaddress.ip_address(a) in n for n in ALLOWED_NETWORKS)]
    if outside:
        raise SystemExit(f"load: refusing {url}: {', '.join(sorted(outside))} is neither loopback nor the sandbox "
                         f"network ({', '.join(map(str, ALLOWED_NETWORKS))})")


def parse_mix(text: str) -> list[str]:
    """"chat=2,stream=1" -> the kinds in the order one client cycles through them."""
    order = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in KINDS or not (weight or "1").isdigit():
            raise SystemExit(f"load: bad --mix entry {part!r}: use KIND=WEIGHT with KIND in {', '.join(KINDS)}")
        order += [kind] * int(weight or "1")
    if not order:
        raise SystemExit("load: --mix names no request kind")
    return order


def _cause(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIStatusError):
        return f"http-{exc.status_code}"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    return type(exc).__name__


async def one_request(client, kind: str, models: dict, max_tokens: int, t0: float) -> Outcome:
    start = time.monotonic()
    outcome = Outcome(kind, start - t0, 0.0, False)
    try:
        if kind == "embed":
            reply = await client.embeddings.create(model=models["embed"], input="What is a chest x-ray?")
            outcome.ok = bool(reply.data and reply.data[0].embedding)
        elif kind == "chat":
            reply = await client.chat.completions.create(
                model=models["chat"], max_tokens=max_tokens, temperature=0,
                messages=[{"role": "user", "content": "What is a chest x-ray? Answer in one sentence."}])
            outcome.tokens = reply.usage.completion_tokens if reply.usage else 0
            outcome.ok = bool(reply.choices and reply.choices[0].message.content)
        else:
            stream = await client.chat.completions.create(
                model=models["chat"], max_tokens=max_tokens, temperature=0, stream=True,
                messages=[{"role": "user", "content": "Name three organs in the chest."}])
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = time.monotonic() - start
                    outcome.tokens += 1
            outcome.ok = outcome.tokens > 0
        if not outcome.ok:
            outcome.cause = "empty"
    except Exception as exc:  # every failure is an outcome to count, never a crash of the run
        outcome.cause = _cause(exc)
    outcome.latency_s = time.monotonic() - start
    return outcome


async def run(url: str, api_key: str, models: dict, mix: list[str], concurrency: int, duration: float,
              max_requests: int, timeout: float, max_tokens: int,
              stop: threading.Event | None = None) -> tuple[list[Outcome], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    deadline = t0 + duration
    issued = 0

    async def worker(index: int) -> None:
        nonlocal issued
        step = index  # clients start at different points of the mix
        while time.monotonic() < deadline and issued < max_requests and not (stop and stop.is_set()):
            issued += 1
            kind = mix[step % len(mix)]
            step += 1
            outcomes.append(await one_request(client, kind, models, max_tokens, t0))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await client.close()
    return outcomes, time.monotonic() - t0


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def longest_stall(outcomes: list[Outcome], elapsed: float) -> float:
    """The longest time without a successful completion, the run's start and end included."""
    done = sorted(o.start_s + o.latency_s for o in outcomes if o.ok)
    edges = [0.0, *done, elapsed]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False))


def summarize(outcomes: list[Outcome], elapsed: float) -> dict:
    failures: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            failures[o.cause] = failures.get(o.cause, 0) + 1
    by_kind = {}
    for kind in KINDS:
        mine = [o for o in outcomes if o.kind == kind]
        if not mine:
            continue
        ok = [o.latency_s for o in mine if o.ok]
        ttft = [o.ttft_s for o in mine if o.ok and o.ttft_s is not None]
        by_kind[kind] = {"requests": len(mine), "failed": len(mine) - len(ok),
                         "p50_s": percentile(ok, 0.50), "p99_s": percentile(ok, 0.99),
                         "ttft_p50_s": percentile(ttft, 0.50), "ttft_p99_s": percentile(ttft, 0.99)}
    ok = [o.latency_s for o in outcomes if o.ok]
    return {"requests": len(outcomes), "failed": len(outcomes) - len(ok), "failures_by_cause": failures,
            "elapsed_s": elapsed, "requests_per_s": len(outcomes) / elapsed if elapsed else 0.0,
            "p50_s": percentile(ok, 0.50), "p99_s": percentile(ok, 0.99),
            "mean_s": statistics.fmean(ok) if ok else None,
            "longest_stall_s": longest_stall(outcomes, elapsed), "by_kind": by_kind}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}s"


def print_summary(summary: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"requests {summary['requests']} in {summary['elapsed_s']:.1f}s ({summary['requests_per_s']:.2f}/s), "
          f"failed {summary['failed']}" + (f" {summary['failures_by_cause']}" if summary["failed"] else ""), file=out)
    print(f"latency p50 {_fmt(summary['p50_s'])} p99 {_fmt(summary['p99_s'])}; "
          f"longest stall {summary['longest_stall_s']:.2f}s", file=out)
    for kind, row in summary["by_kind"].items():
        ttft = f", ttft p50 {_fmt(row['ttft_p50_s'])} p99 {_fmt(row['ttft_p99_s'])}" if row["ttft_p50_s"] else ""
        print(f"  {kind:6} {row['requests']:6} requests, {row['failed']} failed, "
              f"p50 {_fmt(row['p50_s'])} p99 {_fmt(row['p99_s'])}{ttft}", file=out)


class Background:
    """The load in a thread while something else runs (the sandbox tests): `with Background(...) as
    load: ...`; on exit the clients finish the requests they hold and `load.summary` is set. Bounded
    like the command: MAX_DURATION_S at most, and the same target check."""

    def __init__(self, url: str, models: dict, mix: str = "chat=1", concurrency: int = 2, timeout: float = 60.0,
                 max_tokens: int = 8, api_key: str = "none", duration: float = MAX_DURATION_S):
        check_target(url)
        self.args = (url, api_key, models, parse_mix(mix), concurrency, min(duration, MAX_DURATION_S), 100_000,
                     timeout, max_tokens)
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.elapsed = 0.0
        self.summary: dict = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.outcomes, self.elapsed = asyncio.run(run(*self.args, stop=self.stop))

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.summary = summarize(self.outcomes, self.elapsed)


def models_from_plan(inventory: str, strategy: str) -> tuple[str, dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from gpufleet.api import plan_from_inventory
    from gpufleet.serve_config import endpoint

    plan = plan_from_inventory(inventory, strategy)
    models = {}
    for service in plan["services"]:
        kind = "embed" if service["engine_args"].get("runner") == "pooling" else "chat"
        models.setdefault(kind, service["route"]["model_name"])
    return endpoint(plan), models


def api_key(inventory: str | None) -> str:
    if not inventory:
        return os.environ.get("GPUFLEET_API_KEY") or "none"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from gpufleet.endpoint_key import read_key

    return read_key(inventory) or "none"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", help="take the endpoint and model names from this inventory's plan")
    parser.add_argument("-s", "--strategy", default="sandbox")
    parser.add_argument("--url", help="the endpoint, e.g. http://10.89.0.10:8000/v1 (default: from the plan)")
    parser.add_argument("--chat-model")
    parser.add_argument("--embed-model")
    parser.add_argument("--api-key")
    parser.add_argument("--mix", default="chat=2,stream=1,embed=1", help="request kinds and weights")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0, help=f"seconds, at most {MAX_DURATION_S}")
    parser.add_argument("--max-requests", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", metavar="FILE", help="write the summary and every request's outcome")
    args = parser.parse_args(argv)

    url, models = (models_from_plan(args.inventory, args.strategy) if args.inventory else (args.url, {}))
    url = args.url or url
    models.update({k: v for k, v in (("chat", args.chat_model), ("embed", args.embed_model)) if v})
    mix = [k for k in parse_mix(args.mix) if (models.get("embed") if k == "embed" else models.get("chat"))]
    if not url or not mix:
        parser.error("give -i INVENTORY, or --url with --chat-model and/or --embed-model")
    if not 0 < args.duration <= MAX_DURATION_S or not 0 < args.concurrency <= 64 or args.max_requests < 1:
        parser.error(f"bounds: 0 < --duration <= {MAX_DURATION_S}, 0 < --concurrency <= 64, --max-requests >= 1")
    check_target(url)

    # SIGINT/SIGTERM end the run early: no new request, those in flight finish, the summary is written.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    key = args.api_key or api_key(args.inventory)
    outcomes, elapsed = asyncio.run(run(url, key, models, mix, args.concurrency, args.duration,
                                        args.max_requests, args.timeout, args.max_tokens, stop=stop))
    summary = summarize(outcomes, elapsed)
    print(f"load: {url} models {models} mix {args.mix} concurrency {args.concurrency}")
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"url": url, "models": models, "mix": args.mix,
                                               "concurrency": args.concurrency, "summary": summary,
                                               "requests": [asdict(o) for o in outcomes]}, indent=1))
    return 0 if summary["requests"] and not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
