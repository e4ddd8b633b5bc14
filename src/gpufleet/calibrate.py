"""`gpufleet calibrate`: what the running engines showed, written as a catalog overlay.

The planner sizes a vLLM instance's KV cache as budget - weights - activations - overhead, with
the overhead a constant of the engine and device kind (catalog `engines.vllm`: `cpu_runtime_mib`
on CPUs, `non_torch_mib` + `cudagraph_mib` on GPUs). The engines report the KV cache they really
got (`gpufleet status`: vLLM's own block count); the difference is the overhead the planner
missed. For every (engine, model, device kind) that status observed, calibrate writes

    calibration:
      vllm:
        <catalog model key>:
          <device kind: cpu, or the GPU model, e.g. A10>:
            overhead_mib: <the overhead that makes the planned KV cache the observed one>

which `gpufleet plan --catalog FILE` and the playbooks (`-e '{"gpufleet_catalog_files": [FILE]}'`)
read: the next plan of that model on that device kind starts from the site's own measurement and
nothing else changes. Pooling models keep no KV cache and are not calibrated.

The measured overhead is exact to the block: observed KV bytes = observed blocks x block size x
the model's bytes per token (the plan's `kv_cache.bytes_per_token`), and
overhead' = overhead + (planned KV bytes - observed KV bytes) / MiB, rounded down to 1/1024 MiB
so that the new plan's KV cache holds the observed blocks and not one fewer.
"""
from __future__ import annotations

import math

MIB = 1024 * 1024
RESOLUTION = 1024  # overhead_mib in 1/1024 MiB (1 KiB): far below one KV block


def measurements(status: dict, plan: dict) -> list:
    """One measurement per (model, device) from status's KV rows (status.build_status()['observed']):
    {service, model, device, replicas, observed_bytes, planned_bytes, overhead_mib, measured_overhead_mib}.
    Several replicas of one model on one device kind: the smallest KV cache (the planner plans each
    replica with the same figure; the smallest is the one every replica can count on)."""
    services = {s["name"]: s for s in plan.get("services") or []}
    found: dict = {}
    for row in (status.get("observed") or {}).get("kv_cache") or []:
        service = services.get(row["service"])
        seen = row.get("observed") or {}
        kv = (service or {}).get("kv_cache") or {}
        if not service or not kv.get("bytes_per_token") or seen.get("blocks") is None or not seen.get("block_size"):
            continue  # pooling model, no engine report, or a log line without blocks
        observed = seen["blocks"] * seen["block_size"] * kv["bytes_per_token"]
        key = (service["model"], kv["device"])
        entry = found.setdefault(key, {"service": service["name"], "model": service["model"], "device": kv["device"],
                                       "replicas": [], "planned_bytes": kv["bytes"], "overhead_mib": kv["overhead_mib"],
                                       "observed_bytes": observed, "planned_tokens": service.get("kv_cache_tokens"),
                                       "observed_tokens": seen.get("tokens"), "block_size": seen["block_size"],
                                       "blocks": seen["blocks"]})
        entry["replicas"].append(f"{row['replica_id']}@{row['host']}")
        if observed < entry["observed_bytes"]:
            entry.update(observed_bytes=observed, observed_tokens=seen.get("tokens"), blocks=seen["blocks"],
                         block_size=seen["block_size"])
    out = []
    for entry in found.values():
        exact = entry["overhead_mib"] + (entry["planned_bytes"] - entry["observed_bytes"]) / MIB
        entry["measured_overhead_mib"] = max(0.0, math.floor(exact * RESOLUTION) / RESOLUTION)
        out.append(entry)
    return sorted(out, key=lambda e: (e["model"], e["device"]))


def overlay(found: list, inventory: str, applied: dict | None, when: str) -> str:
    """The catalog overlay as YAML text, each figure with where it came from (comments)."""
    lines = [f"# gpufleet calibrate -i {inventory}, {when}: the overhead the running engines showed",
             f"# (strategy {(applied or {}).get('strategy')} applied {(applied or {}).get('applied_at')}).",
             "# Feed it back: gpufleet plan --catalog THIS_FILE, or -e '{\"gpufleet_catalog_files\": [THIS_FILE]}'."]
    if not found:
        lines.append("calibration: {}  # no engine reported a KV cache that could be measured")
        return "\n".join(lines) + "\n"
    lines += ["calibration:", "  vllm:"]
    by_model: dict = {}
    for e in found:
        by_model.setdefault(e["model"], []).append(e)
    for model, entries in by_model.items():
        lines.append(f"    {_yaml_key(model)}:")
        for e in entries:
            lines.append(f"      # {e['service']} ({', '.join(e['replicas'])}): the engine reported {e['blocks']} "
                         f"blocks of {e['block_size']} tokens = {e['observed_bytes']} bytes, "
                         f"{e['observed_tokens']} tokens;")
            lines.append(f"      # planned {e['planned_bytes']} bytes, {e['planned_tokens']} tokens, "
                         f"with an overhead of {e['overhead_mib']} MiB")
            lines.append(f"      {_yaml_key(e['device'])}: {{overhead_mib: {e['measured_overhead_mib']}}}")
    return "\n".join(lines) + "\n"


def _yaml_key(text: str) -> str:
    import json
    return json.dumps(str(text))  # a JSON string is a YAML scalar, whatever the model key holds


def run(inventory: str, output: str, limit: str | None = None, out=None) -> int:
    """Read the cluster (playbooks/status.yml, read-only), write the overlay; the exit status."""
    import datetime
    import sys

    from . import record
    from .content import playbook
    from .runner import run_playbook
    from .status import build_status

    out = out or sys.stdout
    result = run_playbook(playbook("status.yml"), inventory, action="calibrate", tags="record,cluster",
                          limit=limit, out=sys.stderr, quiet_progress=True)
    if not result.ok:
        for f in result.failures:
            print(f"gpufleet: {f['host']}: {f['task']}: {f['msg']}", file=sys.stderr)
        print(f"gpufleet: the status play failed (run artifacts: {result.artifact_dir})", file=sys.stderr)
        return 1
    current, _ = record.records_from_stats(result.stats_data)
    if current is None:
        print("gpufleet: error: nothing to calibrate against: no applied record on the head "
              "(apply a strategy with gpufleet first)", file=sys.stderr)
        return 2
    data = build_status(result.stats_data, current)
    found = measurements(data, current["plan"])
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(overlay(found, inventory, current, when))
    for e in found:
        print(f"{e['model']} on {e['device']}: overhead {e['overhead_mib']} -> {e['measured_overhead_mib']} MiB "
              f"(engine {e['observed_tokens']} KV tokens, plan {e['planned_tokens']})", file=out)
    rows = (data.get("observed") or {}).get("kv_cache") or []
    for row in rows:
        if row["runner"] != "generate":
            print(f"{row['service']}: a pooling model keeps no KV cache; nothing to calibrate", file=out)
        elif not (row.get("observed") or {}).get("blocks"):
            print(f"{row['service']} ({row['replica_id']}): its engine reported no block count; not calibrated",
                  file=out)
    print(f"wrote {output} ({len(found)} measurement(s)); use it with: gpufleet plan --catalog {output}", file=out)
    return 0
