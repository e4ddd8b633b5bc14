"""Routing by content, measured on a running endpoint: accuracy on labelled prompts and added latency.

    .venv/bin/python bench/route_accuracy.py -i inventory/sandbox --json out.json

Applies nothing: the endpoint must serve a strategy with `routing` (on the sandbox:
`gpufleet apply -i inventory/sandbox -s sandbox-routed --yes`). Two measurements in one run:

- accuracy: every prompt of tests/data/route_prompts.yml (domain -> prompts) goes to POST /route,
  which answers the model routing by content picks without generating; a prompt counts as right
  when the picked model is the one serving its domain (from the strategy's plan). Prints accuracy
  per domain, the confusions, and p50/p99 of the router's own scoring time (the embedding call).
- added latency: --pairs chat requests (max_tokens 1) to the default model, each sent once naming it
  and once with model "auto" (a prompt routed to it), alternating; prints p50 of both and the difference.

Only loopback and the sandbox network are reached (bench/load.py check_target).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import api_key, check_target, percentile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "tests" / "data" / "route_prompts.yml"


def routing_of(inventory: str, strategy: str) -> tuple[str, dict, str]:
    """The endpoint, domain -> model name, and the default model, from the strategy's plan."""
    sys.path.insert(0, str(REPO / "src"))
    from gpufleet.api import plan_from_inventory
    from gpufleet.serve_config import endpoint

    plan = plan_from_inventory(inventory, strategy)
    if not plan.get("routing"):
        raise SystemExit(f"strategy {strategy} has no routing")
    domains = {s["route"]["domain"]: s["route"]["model_name"] for s in plan["services"] if s["route"].get("domain")}
    return endpoint(plan).removesuffix("/v1"), domains, plan["routing"]["default_model"]


def accuracy(client: httpx.Client, base: str, prompts: dict, domains: dict) -> dict:
    rows = []
    for domain, texts in prompts.items():
        for text in texts:
            started = time.monotonic()
            answer = client.post(f"{base}/route", json={"messages": [{"role": "user", "content": text}]})
            answer.raise_for_status()
            decision = answer.json()
            rows.append({"domain": domain, "prompt": text, "picked": decision["model"],
                         "picked_domain": decision["domain"], "right": decision["model"] == domains[domain],
                         "scoring_s": decision["seconds"], "round_trip_s": time.monotonic() - started})
    scoring = [r["scoring_s"] for r in rows]
    return {"prompts": len(rows), "right": sum(r["right"] for r in rows),
            "accuracy": sum(r["right"] for r in rows) / len(rows),
            "per_domain": {d: sum(r["right"] for r in rows if r["domain"] == d) / len(texts)
                           for d, texts in prompts.items()},
            "wrong": [{k: r[k] for k in ("domain", "picked_domain", "prompt")} for r in rows if not r["right"]],
            "scoring_p50_s": percentile(scoring, 0.5), "scoring_p99_s": percentile(scoring, 0.99), "rows": rows}


def added_latency(client: httpx.Client, base: str, model: str, prompts: list, pairs: int) -> dict:
    named, auto = [], []
    for i in range(pairs):
        text = prompts[i % len(prompts)]
        for side, chosen in ((named, model), (auto, "auto")) if i % 2 == 0 else ((auto, "auto"), (named, model)):
            started = time.monotonic()
            answer = client.post(f"{base}/v1/chat/completions", json={
                "model": chosen, "max_tokens": 1, "messages": [{"role": "user", "content": text}]})
            answer.raise_for_status()
            if answer.json()["model"] != model:
                raise SystemExit(f"{text!r} was answered by {answer.json()['model']}, not {model}")
            side.append(time.monotonic() - started)
    return {"pairs": pairs, "named_p50_s": statistics.median(named), "auto_p50_s": statistics.median(auto),
            "added_p50_s": statistics.median(auto) - statistics.median(named)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", required=True)
    parser.add_argument("-s", "--strategy", default="sandbox-routed")
    parser.add_argument("--prompts", default=str(PROMPTS))
    parser.add_argument("--pairs", type=int, default=20, help="named/auto request pairs for the added latency")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if not 0 <= args.pairs <= 200:
        parser.error("--pairs: 0..200")
    base, domains, default = routing_of(args.inventory, args.strategy)
    check_target(base + "/v1")
    prompts = yaml.safe_load(Path(args.prompts).read_text())
    with httpx.Client(headers={"Authorization": f"Bearer {api_key(args.inventory)}"}, timeout=120) as client:
        result = accuracy(client, base, prompts, domains)
        default_domain = next(d for d, m in domains.items() if m == default)
        if args.pairs:
            result["latency"] = added_latency(client, base, default, prompts[default_domain], args.pairs)
    print(f"routing by content: {result['right']}/{result['prompts']} right ({result['accuracy']:.0%}); "
          + ", ".join(f"{d} {v:.0%}" for d, v in result["per_domain"].items()))
    print(f"scoring (the embedding call) p50 {result['scoring_p50_s'] * 1000:.1f} ms, "
          f"p99 {result['scoring_p99_s'] * 1000:.1f} ms")
    for wrong in result["wrong"]:
        print(f"  {wrong['domain']} -> {wrong['picked_domain'] or 'default'}: {wrong['prompt']}")
    if "latency" in result:
        lat = result["latency"]
        print(f"chat to {default}, max_tokens 1, {lat['pairs']} pairs: named p50 {lat['named_p50_s'] * 1000:.1f} ms, "
              f"auto p50 {lat['auto_p50_s'] * 1000:.1f} ms, added {lat['added_p50_s'] * 1000:+.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
