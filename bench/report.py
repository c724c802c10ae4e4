#!/usr/bin/env python3
"""Summarise a benchmark results directory written by bench/run.sh.

    python3 bench/report.py bench/results/<date>

Reads every <server>-<scenario>.json (the load generator's --json reports) and meta.json,
writes <dir>/summary.md (one row per server per scenario) and, when matplotlib is available,
<dir>/latency.png (latency percentiles per server for chat and broadcast) and <dir>/rss.png
(server RSS per connection against connection count, one line per server).

matplotlib: `apt-get install -y python3-matplotlib` (then run with /usr/bin/python3) or
`python3 -m pip install matplotlib`. Without it only summary.md is written.
"""

import json
import math
import sys
from pathlib import Path

SERVER_ORDER = ["before", "before-1w", "gateway", "gateway-1w", "bun", "socketio"]
SERVER_LABEL = {
    "before": "gateway (before)",
    "before-1w": "gateway (before), 1 worker",
    "gateway": "gateway",
    "gateway-1w": "gateway, 1 worker",
    "bun": "Bun",
    "socketio": "socket.io",
}
SERVER_COLOR = {
    "before": "#fdae61",
    "before-1w": "#fee08b",
    "gateway": "#d95f02",
    "gateway-1w": "#e7298a",
    "bun": "#7570b3",
    "socketio": "#1b9e77",
}
SCENARIO_ORDER = [
    "flood",
    "flood-1000",
    "flood-5000",
    "flood-19000",
    "bigroom-off",
    "bigroom",
    "bigroom-each",
    "chat",
    "chat-240k",
    "chat-480k",
    "broadcast-5000-100k",
    "broadcast-5000",
    "broadcast-10000",
    "churn",
]
LATENCY_SCENARIOS = ["chat", "chat-240k", "chat-480k", "broadcast-5000-100k", "broadcast-5000", "broadcast-10000"]
PERCENTILES = ["p50", "p90", "p99", "p999"]


def order_key(items, order):
    def key(name):
        return (order.index(name), "") if name in order else (len(order), name)

    return sorted(items, key=key)


def load(directory):
    """{(server, scenario): report} and meta (a dict, maybe empty)."""
    meta_path = directory / "meta.json"
    meta = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            print(f"report: meta.json unreadable: {e}", file=sys.stderr)
    # Server names may hold dashes (gw-<label>): the longest listed name that prefixes the
    # file name wins; otherwise the part before the first dash.
    known = sorted(set(meta.get("servers") or []) | set(SERVER_ORDER), key=len, reverse=True)
    runs = {}
    for path in sorted(directory.glob("*.json")):
        if path.name == "meta.json" or "-" not in path.stem:
            continue
        server = next((k for k in known if path.stem.startswith(k + "-")), None)
        if server is None:
            server, scenario = path.stem.split("-", 1)
        else:
            scenario = path.stem[len(server) + 1 :]
        try:
            runs[(server, scenario)] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"report: skipping {path.name}: {e}", file=sys.stderr)
    return runs, meta


def get(report, *path):
    """report[a][b]..., or None when any step is missing or null."""
    value = report
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def num(value, digits=1, scale=1.0):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = value * scale
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ms(value):
    if value is None:
        return "–"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def errors(report):
    errs = report.get("errors") or {}
    if not isinstance(errs, dict):
        return "–"
    nonzero = {k: v for k, v in errs.items() if v}
    if not nonzero:
        return "0"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(nonzero.items(), key=lambda kv: -kv[1]))


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def connection_rows(runs, servers, scenarios):
    rows = []
    for scenario in scenarios:
        for server in servers:
            r = runs.get((server, scenario))
            if r is None:
                continue
            rows.append(
                [
                    scenario,
                    SERVER_LABEL.get(server, server),
                    num(get(r, "connections"), 0),
                    f"**{num(get(r, 'rss_per_connection_kib'), 2)}**",
                    f"{num(get(r, 'server_rss_kib_before'), 1, 1 / 1024)} → "
                    f"{num(get(r, 'server_rss_kib_after'), 1, 1 / 1024)}",
                    num(get(r, "connect_rate"), 0),
                    " / ".join(ms(get(r, "handshake_ms", p)) for p in ("p50", "p99", "max")),
                    num(get(r, "server_cpu_us_per_connect"), 1),
                    errors(r),
                ]
            )
    return rows


def message_rows(runs, servers, scenarios):
    rows = []
    for scenario in scenarios:
        for server in servers:
            r = runs.get((server, scenario))
            if r is None:
                continue
            integrity = " / ".join(num(get(r, k), 0) for k in ("gaps", "duplicates", "reorders"))
            rows.append(
                [
                    scenario,
                    SERVER_LABEL.get(server, server),
                    num(get(r, "connections"), 0),
                    num(get(r, "sent"), 0),
                    num(get(r, "received"), 0),
                    f"**{num(get(r, 'deliveries_per_sec'), 0)}**",
                    *(ms(get(r, "latency_ms", p)) for p in ("p50", "p90", "p99", "p999", "max")),
                    integrity,
                    num(get(r, "server_cpu_us_per_delivery"), 2),
                    num(get(r, "rss_per_connection_kib"), 2),
                    errors(r),
                ]
            )
    return rows


def plot_latency(plt, runs, servers, path):
    from matplotlib import ticker

    scenarios = [s for s in LATENCY_SCENARIOS if any((sv, s) in runs for sv in servers)]
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4.2), squeeze=False)
    width = 0.8 / max(1, len(servers))
    for ax, scenario in zip(axes[0], scenarios):
        drew = False
        for i, server in enumerate(servers):
            r = runs.get((server, scenario))
            if r is None:
                continue
            values = [get(r, "latency_ms", p) for p in PERCENTILES]
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(PERCENTILES))]
            # Missing values are drawn as nothing (NaN), not as zero.
            heights = [v if v is not None and v > 0 else float("nan") for v in values]
            label = SERVER_LABEL.get(server, server)
            if all(v is None for v in values):
                label += " (no latency data)"
            bars = ax.bar(
                xs,
                heights,
                width,
                label=label,
                color=SERVER_COLOR.get(server),
            )
            for bar, v in zip(bars, values):
                if v is not None and v > 0:
                    ax.annotate(
                        ms(v),
                        (bar.get_x() + bar.get_width() / 2, v),
                        ha="center",
                        va="bottom",
                        fontsize=6,
                        rotation=90,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
                    drew = True
        ax.set_xticks(range(len(PERCENTILES)))
        ax.set_xticklabels(PERCENTILES)
        ax.set_title(scenario)
        ax.set_ylabel("publish → deliver latency (ms, log)")
        if drew:
            ax.set_yscale("log")
            # Ticks at 1, 2, 5 × 10^n with plain numbers: readable over less than a decade.
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency percentiles (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_rss(plt, runs, servers, path):
    points = {}
    for (server, scenario), r in runs.items():
        if not scenario.startswith("flood"):
            continue
        conns, per_conn = get(r, "connections"), get(r, "rss_per_connection_kib")
        if conns and per_conn is not None:
            points.setdefault(server, {})[conns] = (per_conn, get(r, "server_rss_kib_after"))
    if not points:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server in servers:
        if server not in points:
            continue
        xs = sorted(points[server])
        label = SERVER_LABEL.get(server, server)
        color = SERVER_COLOR.get(server)
        left.plot(xs, [points[server][x][0] for x in xs], marker="o", label=label, color=color)
        total = [(x, points[server][x][1]) for x in xs if points[server][x][1] is not None]
        if total:
            right.plot(
                [x for x, _ in total],
                [v / 1024 for _, v in total],
                marker="o",
                label=label,
                color=color,
            )
    left.set_title("Server RSS per connection")
    left.set_ylabel("KiB per connection")
    right.set_title("Server RSS with the connections open")
    right.set_ylabel("MiB")
    for ax in (left, right):
        ax.set_xlabel("connections")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) == 2 else 2
    directory = Path(argv[1])
    if not directory.is_dir():
        print(f"report: {directory} is not a directory", file=sys.stderr)
        return 2
    runs, meta = load(directory)
    if not runs:
        print(f"report: no <server>-<scenario>.json in {directory}", file=sys.stderr)
        return 1

    servers = order_key({s for s, _ in runs}, SERVER_ORDER)
    scenarios = order_key({c for _, c in runs}, SCENARIO_ORDER)
    floods = [s for s in scenarios if s.startswith(("flood", "bigroom"))]
    messaging = [s for s in scenarios if not s.startswith(("flood", "bigroom"))]

    plots = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        print(
            "report: matplotlib not found, plots skipped "
            "(apt-get install -y python3-matplotlib, or python3 -m pip install matplotlib)",
            file=sys.stderr,
        )
    if plt is not None:
        if plot_latency(plt, runs, servers, directory / "latency.png"):
            plots.append(("Latency percentiles, chat and broadcast", "latency.png"))
        if plot_rss(plt, runs, servers, directory / "rss.png"):
            plots.append(("Server RSS against connections (flood runs)", "rss.png"))

    md = [f"# Benchmark results {meta.get('date', directory.name)}", ""]
    if meta:
        md.append(
            "Machine: {cpu}, {cores} cores, {mem} GiB, {kernel}. Open-file limit {nofile}.".format(
                cpu=meta.get("cpu") or "?",
                cores=meta.get("cores", "?"),
                mem=meta.get("mem_gib", "?"),
                kernel=meta.get("kernel") or "?",
                nofile=meta.get("nofile", "?"),
            )
        )
        md.append(
            "Servers: {gw} (commit {commit}), Bun {bun}, socket.io {sio} on Node {node}.".format(
                gw=meta.get("gateway") or "gateway",
                commit=meta.get("git_commit") or "?",
                bun=meta.get("bun") or "?",
                sio=meta.get("socket_io") or "?",
                node=meta.get("node") or "?",
            )
        )
        if meta.get("quick"):
            md.append("")
            md.append("**QUICK run: tiny sizes for a smoke check; not benchmark figures.**")
        md.append("")
    md.append(
        "One load generator on the same machine as the server; each server started fresh for "
        "each scenario. The peers do not verify JWT signatures (see bench/README.md)."
    )
    md.append("")

    if floods:
        md += ["## Connections", ""]
        md.append(
            table(
                [
                    "scenario",
                    "server",
                    "connections",
                    "RSS / conn (KiB)",
                    "RSS (MiB)",
                    "connects/s",
                    "handshake p50 / p99 / max (ms)",
                    "CPU / connect (µs)",
                    "errors",
                ],
                connection_rows(runs, servers, floods),
            )
        )
        md.append("")
    if messaging:
        md += ["## Messaging", ""]
        md.append(
            table(
                [
                    "scenario",
                    "server",
                    "connections",
                    "sent",
                    "received",
                    "deliveries/s",
                    "p50 (ms)",
                    "p90",
                    "p99",
                    "p999",
                    "max",
                    "gaps / dups / reorders",
                    "CPU µs / delivery",
                    "RSS / conn (KiB)",
                    "errors",
                ],
                message_rows(runs, servers, messaging),
            )
        )
        md.append("")

    # Runs asked for (meta.json lists them) or seen for another server, without a report.
    wanted_servers = order_key(set(servers) | set(meta.get("servers") or []), SERVER_ORDER)
    wanted_scenarios = order_key(set(scenarios) | set(meta.get("scenarios") or []), SCENARIO_ORDER)
    missing = [
        f"{SERVER_LABEL.get(sv, sv)} {sc}"
        for sc in wanted_scenarios
        for sv in wanted_servers
        if (sv, sc) not in runs
    ]
    if missing:
        md += ["Missing runs (no report): " + ", ".join(missing) + ".", ""]

    for title, name in plots:
        md += [f"## {title}", "", f"![{title}]({name})", ""]

    (directory / "summary.md").write_text("\n".join(md))
    print(f"report: wrote {directory / 'summary.md'}" + "".join(f", {directory / n}" for _, n in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
