"""The plan as a table for people (`gpufleet plan`, `apply`, `render`)."""
from __future__ import annotations

PART_ORDER = ("weights", "kv_cache", "activations", "overhead", "reserved", "cuda_context")


def _device_name(g: dict) -> str:
    return f"{g['host']}:{g['index'] if g['kind'] == 'gpu' else 'cpu'}"


def format_table(data: dict) -> str:
    """Per-service summary, then each device's memory split, then the verdicts."""
    lines = [f"strategy {data['strategy']} on {data['inventory']}: "
             + ("FITS" if data["feasible"] else f"DOES NOT FIT ({len(data['errors'])} error(s))"), ""]
    lines.append(f"{'service':28} {'engine':7} {'model':36} {'replicas':>9} {'KV tokens':>10}")
    for s in data["services"]:
        r = s["replicas"]
        count = f"{r['min']}-{s['max_replicas']}" if r["autoscaling"] else str(s["max_replicas"])
        count += "*" if "idle_unload_s" in s else ""
        kv = "-" if s["kv_cache_tokens"] is None else str(s["kv_cache_tokens"])
        lines.append(f"{s['name'][:28]:28} {s['engine']:7} {s['model'][:36]:36} {count:>9} {kv:>10}")
    lines += ["", f"{'device':26} {'total MiB':>9} {'planned':>8} {'free':>7}  split (MiB)"]
    runs = []  # consecutive devices with the same split collapse into one line
    for g in data["gpus"]:
        signature = (g["memory_mib"], g["planned_mib"], str(g.get("on_demand")),
                     tuple((a["service"], a["mib"], tuple(sorted(a["parts"].items()))) for a in g["allocations"]))
        if runs and runs[-1][0] == signature:
            runs[-1][2] = g
            runs[-1][3] += 1
        else:
            runs.append([signature, g, g, 1])
    for _, first, last, count in runs:
        name = _device_name(first) + (f"..{_device_name(last)} ({count})" if count > 1 else "")
        if not first["allocations"]:
            lines.append(f"{name:26} {first['memory_mib']:>9} {0:>8} {first['memory_mib']:>7}  (nothing planned)")
            continue
        split = "; ".join(
            f"{a['service']}#{a['replica']} {a['mib']} (" + " ".join(
                f"{k.replace('_', ' ')} {a['parts'][k]}" for k in PART_ORDER if a["parts"].get(k)) + ")"
            for a in first["allocations"])
        over = " OVER" if first["planned_mib"] > first["memory_mib"] else ""
        if first.get("on_demand"):
            od = first["on_demand"]
            split += (f"; planned: the always-loaded plus {' + '.join(od['counted'])}, the largest "
                      + (f"{od['max_loaded']} on-demand" if od["max_loaded"] else "on-demand (no cap: all)")
                      + " loaded together")
        lines.append(f"{name:26} {first['memory_mib']:>9} {first['planned_mib']:>8} "
                     f"{first['memory_mib'] - first['planned_mib']:>7}{over}  {split}")
    if any("idle_unload_s" in s for s in data["services"]):
        cap = data.get("max_loaded_models")
        lines += ["", "* loads on its first request and unloads when idle (replicas.min 0); "
                  + (f"at most {cap} such services loaded at once" if cap else "no cap on how many load at once")
                  + ("; idle: sleep ones sleep first and count as loaded while asleep"
                     if any(s.get("idle") == "sleep" for s in data["services"]) else "")]
    for kind in ("errors", "warnings"):
        if data[kind]:
            lines += ["", kind.upper()]
            for f in data[kind]:
                where = ", ".join(x for x in (f["service"], f["gpu"], f["field"]) if x)
                lines.append(f"  [{f['code']}] {where}: {f['message']}")
                if f["fix"]:
                    lines.append(f"      fix: {f['fix']}")
    return "\n".join(lines)
