"""The plan drawn: one stacked bar per device (a segment per instance), grouped by node."""
from __future__ import annotations

from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
BAR, GAP, NODE_GAP, HEIGHT, TOP, LEFT = 18, 4, 16, 220, 40, 60


def render_svg(data: dict) -> str:
    services = [s["name"] for s in data["services"]]
    color = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(services)}
    scale_mib = max([g["memory_mib"] for g in data["gpus"]] + [g["planned_mib"] for g in data["gpus"]] + [1])
    parts, x, host = [], LEFT, None
    for g in data["gpus"]:
        if g["host"] != host:
            if host is not None:
                x += NODE_GAP
            host = g["host"]
            parts.append(f'<text x="{x}" y="{TOP + HEIGHT + 30}" font-size="10" transform="rotate(30 {x} '
                         f'{TOP + HEIGHT + 30})">{escape(host)}</text>')
        y = TOP + HEIGHT
        for a in g["allocations"]:
            h = HEIGHT * a["mib"] / scale_mib
            y -= h
            detail = ", ".join(f"{k} {v}" for k, v in a["parts"].items() if v)
            fill = color.get(a["service"], "#999")
            parts.append(f'<rect x="{x}" y="{y:.1f}" width="{BAR}" height="{h:.1f}" fill="{fill}" '
                         f'stroke="white" stroke-width="0.5"><title>{escape(g["host"])}:{g["index"]} '
                         f'{escape(a["service"])}#{a["replica"]}: {a["mib"]} MiB ({escape(detail)})</title></rect>')
        capacity_y = TOP + HEIGHT - HEIGHT * g["memory_mib"] / scale_mib
        over = g["planned_mib"] > g["memory_mib"]
        parts.append(f'<line x1="{x - 1}" x2="{x + BAR + 1}" y1="{capacity_y:.1f}" y2="{capacity_y:.1f}" '
                     f'stroke="{"#d00" if over else "#333"}" stroke-width="{2 if over else 1}"/>')
        parts.append(f'<text x="{x + BAR / 2}" y="{TOP + HEIGHT + 12}" font-size="8" '
                     f'text-anchor="middle">{g["index"]}</text>')
        x += BAR + GAP
    legend_y = TOP + HEIGHT + 70
    for i, name in enumerate(services):
        lx = LEFT + (i % 4) * 220
        ly = legend_y + (i // 4) * 16
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color[name]}"/>'
                     f'<text x="{lx + 14}" y="{ly}" font-size="11">{escape(name)}</text>')
    width = max(x + LEFT, LEFT + 4 * 220)
    height = legend_y + 16 * (len(services) // 4 + 1) + 10
    verdict = "fits" if data["feasible"] else f"does not fit: {len(data['errors'])} error(s)"
    title = f"{data['strategy']} on {data['inventory']} ({verdict}); bar = device memory, line = capacity"
    axis = (f'<text x="{LEFT - 6}" y="{TOP + 4}" font-size="9" text-anchor="end">{scale_mib} MiB</text>'
            f'<text x="{LEFT - 6}" y="{TOP + HEIGHT}" font-size="9" text-anchor="end">0</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
            f'<text x="{LEFT}" y="20" font-size="13">{escape(title)}</text>{axis}{"".join(parts)}</svg>\n')
