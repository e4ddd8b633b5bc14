"""Render one panel of monitoring/grafana/dashboards/gpufleet.json as an SVG line chart from real data.

Each of the panel's target `expr`s runs as a Prometheus range query (query_range); nothing is invented:
a query that returns no series is an error. Same drawing approach as src/gpufleet/svg.py.

    .venv/bin/python monitoring/render_panel.py --panel "Requests per second" --minutes 10 \
        --prometheus-via-podman sandbox-head --out docs/img/panel-requests-per-second.svg
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from html import escape
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gpufleet.svg import PALETTE  # noqa: E402

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "dashboards" / "gpufleet.json"
WIDTH, HEIGHT, TOP, LEFT, RIGHT = 960, 300, 40, 70, 20
UNITS = {"decmbytes": (1, "MB"), "bytes": (2**20, "MiB"), "reqps": (1, "req/s"), "s": (1, "s"),
         "percentunit": (0.01, "%"), "short": (1, "")}


class NoData(RuntimeError):
    pass


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m[2]]


def find_panel(dashboard: dict, title: str) -> dict:
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        if panel.get("title") == title:
            return panel
        stack += panel.get("panels", [])
    raise SystemExit(f"no panel titled {title!r} in the dashboard")


def substitute(expr: str, step: str, minutes: int) -> str:
    """Grafana's built-in variables; a label_replace group such as "$1" is not one and stays."""
    values = {"__rate_interval": "1m", "__interval": step, "__interval_ms": str(int(seconds(step) * 1000)),
              "__range": f"{minutes}m", "__range_s": str(minutes * 60)}
    out = re.sub(r"\$\{?(__\w+)\}?", lambda m: values.get(m[1], m[0]), expr)
    left = re.search(r"\$\{?[A-Za-z_]\w*", out)
    if left:
        raise SystemExit(f"unsupported Grafana variable {left[0]} in: {expr}")
    return out


def legend(fmt: str | None, labels: dict) -> str:
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt).strip()
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels.get('__name__', '')}{{{rest}}}"


def series_of(payload: dict, target: dict) -> list[tuple[str, list[tuple[float, float]]]]:
    """(legend, [(unix time, value)]) per series of a query_range answer; non-finite values are gaps."""
    if payload.get("status") != "success" or payload.get("data", {}).get("resultType") != "matrix":
        raise NoData(f"Prometheus did not answer with a matrix: {json.dumps(payload)[:300]}")
    out = []
    for s in payload["data"]["result"]:
        points = [(float(t), float(v)) for t, v in s["values"]]
        if any(math.isfinite(v) for _, v in points):
            out.append((legend(target.get("legendFormat"), s["metric"]), points))
    if not out:
        hint = f" ({target['gpufleetGpuOnly']})" if target.get("gpufleetGpuOnly") else ""
        raise NoData(f"no series with data for expr {target['expr']!r}{hint}")
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def label(v: float, unit: str | None) -> str:
    div, suffix = UNITS.get(unit or "short", (1, unit or ""))
    if unit == "s" and 0 < abs(v) < 1:
        div, suffix = 0.001, "ms"
    return f"{v / div:.4g} {suffix}".strip()


def render_svg(title: str, unit: str | None, series: list, start: float, end: float, footer: str) -> str:
    values = [v for _, points in series for _, v in points if math.isfinite(v)]
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1
    ticks = nice_ticks(lo, hi)
    lo, hi = ticks[0], ticks[-1]
    plot_w = WIDTH - LEFT - RIGHT
    x_of = lambda t: LEFT + plot_w * (t - start) / (end - start)  # noqa: E731
    y_of = lambda v: TOP + HEIGHT - HEIGHT * (v - lo) / (hi - lo)  # noqa: E731
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{HEIGHT}" fill="none" stroke="#999"/>']
    for v in ticks:
        y = y_of(v)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{LEFT - 6}" y="{y + 3:.1f}" font-size="9" text-anchor="end">'
                     f'{escape(label(v, unit))}</text>')
    step = next(s for s in (15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
                if (end - start) / s <= 10)
    for t in range(int(math.ceil(start / step) * step), int(end) + 1, step):
        x = x_of(t)
        stamp = datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S" if step < 60 else "%H:%M")
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + HEIGHT}" stroke="#e5e5e5"/>'
                     f'<text x="{x:.1f}" y="{TOP + HEIGHT + 13}" font-size="9" text-anchor="middle">{stamp}</text>')
    col = max(160, 6.5 * max(len(name) for name, _ in series) + 24)
    per_row = max(1, int(plot_w // col))
    legend_y = TOP + HEIGHT + 40
    for i, (name, points) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        d, pen = [], "M"
        for t, v in points:
            if math.isfinite(v):
                d.append(f"{pen}{x_of(t):.1f},{y_of(v):.1f}")
                pen = "L"
            else:
                pen = "M"
        parts.append(f'<path d="{" ".join(d)}" fill="none" stroke="{color}" stroke-width="1.5">'
                     f'<title>{escape(name)}</title></path>')
        lx, ly = LEFT + (i % per_row) * col, legend_y + (i // per_row) * 16
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{ly}" font-size="11">{escape(name)}</text>')
    lines = [line for para in footer.split("\n") for line in textwrap.wrap(para, 165, subsequent_indent="    ")]
    foot_y = legend_y + 16 * ((len(series) - 1) // per_row + 1) + 8
    parts += [f'<text x="{LEFT}" y="{foot_y + 12 * i}" font-size="9" fill="#555" font-family="monospace">'
              f'{escape(line)}</text>' for i, line in enumerate(lines)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{foot_y + 12 * len(lines) + 6}" '
            f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
            f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>'
            f'{"".join(parts)}</svg>\n')


def query_range(args, expr: str, start: float, end: float) -> dict:
    params = {"query": expr, "start": f"{start:.0f}", "end": f"{end:.0f}", "step": args.step}
    if args.prometheus_via_podman:
        cmd = ["podman", "exec", args.prometheus_via_podman, "curl", "-sf", "-G",
               "http://127.0.0.1:9090/api/v1/query_range"]
        for k, v in params.items():
            cmd += ["--data-urlencode", f"{k}={v}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise SystemExit(f"query_range failed (curl exit {done.returncode}) {done.stderr.strip()}: {expr}")
        return json.loads(done.stdout)
    url = f"{args.prometheus.rstrip('/')}/api/v1/query_range?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as answer:
        return json.load(answer)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--panel", required=True, help="a panel title in gpufleet.json")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--step", default="5s")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dashboard", type=Path, default=DASHBOARD)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--prometheus-via-podman", metavar="CONTAINER")
    where.add_argument("--prometheus", metavar="URL")
    args = p.parse_args(argv)
    seconds(args.step)
    panel = find_panel(json.loads(args.dashboard.read_text()), args.panel)
    end = time.time() // seconds(args.step) * seconds(args.step)
    start = end - args.minutes * 60
    series, exprs = [], []
    for target in panel.get("targets", []):
        expr = substitute(target["expr"], args.step, args.minutes)
        exprs.append(f"{target.get('refId', '?')}: {expr}")
        try:
            series += sorted(series_of(query_range(args, expr, start, end), target), key=lambda s: s[0])
        except NoData as e:
            raise SystemExit(f"panel {args.panel!r}: {e}") from None
    if not series:
        raise SystemExit(f"panel {args.panel!r} has no Prometheus targets")
    when = "–".join(datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") for t in (start, end))
    source = f"podman container {args.prometheus_via_podman}" if args.prometheus_via_podman else args.prometheus
    footer = "\n".join([f"rendered from Prometheus query_range on {source}, {when} UTC, step {args.step}, expr:",
                        *exprs])
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_svg(args.panel, unit, series, start, end, footer))
    print(f"{args.out}: {len(series)} series, {when} UTC")


if __name__ == "__main__":
    main()
