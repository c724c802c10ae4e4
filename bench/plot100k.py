#!/usr/bin/env python3
"""Plots bench/100k.sh's timelines (<dir>/<mode>-timeline.csv: seconds, connections, RSS KiB)
as <dir>/100k.svg: open connections and the six nodes' RSS over time, one line per mode.
Hand-drawn SVG, no dependencies."""
import csv
import pathlib
import sys

COLORS = {"redis": "#1f77b4", "cluster": "#d62728"}


def read(path):
    rows = []
    with open(path) as f:
        for row in csv.reader(f):
            try:
                rows.append((float(row[0]), int(row[1]), int(row[2]) / 1024))
            except (ValueError, IndexError):
                pass
    return rows


def panel(out, x0, y0, w, h, series, col, label, unit):
    tmax = max((r[0] for rows in series.values() for r in rows), default=1) or 1
    vmax = max((r[col] for rows in series.values() for r in rows), default=1) or 1
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{x0}" y="{y0 - 8}" font-size="13">{label}</text>')
    for i in range(5):
        v = vmax * i / 4
        y = y0 + h - h * i / 4
        out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + w}" y2="{y}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4}" font-size="10" text-anchor="end">{v:,.0f}{unit}</text>')
    for i in range(5):
        t = tmax * i / 4
        x = x0 + w * i / 4
        out.append(f'<text x="{x}" y="{y0 + h + 14}" font-size="10" text-anchor="middle">{t:.0f} s</text>')
    for mode, rows in series.items():
        pts = " ".join(f"{x0 + w * r[0] / tmax:.1f},{y0 + h - h * r[col] / vmax:.1f}" for r in rows)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{COLORS.get(mode, "#333")}" stroke-width="1.5"/>')


def main():
    d = pathlib.Path(sys.argv[1])
    series = {}
    for mode in ("redis", "cluster"):
        p = d / f"{mode}-timeline.csv"
        if p.exists():
            series[mode] = read(p)
    if not series:
        print("plot100k: no timelines", file=sys.stderr)
        return
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="760" height="300" font-family="sans-serif">',
           '<rect width="760" height="300" fill="white"/>']
    panel(out, 70, 40, 290, 200, series, 1, "open connections (six nodes)", "")
    panel(out, 450, 40, 290, 200, series, 2, "RSS of the six nodes", " MiB")
    for i, mode in enumerate(series):
        label = "one Redis" if mode == "redis" else "Redis Cluster (3 primaries)"
        out.append(f'<rect x="{70 + i * 220}" y="272" width="12" height="4" fill="{COLORS.get(mode, "#333")}"/>')
        out.append(f'<text x="{88 + i * 220}" y="278" font-size="12">{label}</text>')
    out.append("</svg>")
    (d / "100k.svg").write_text("\n".join(out))
    print(f"plot100k: wrote {d / '100k.svg'}")


if __name__ == "__main__":
    main()
