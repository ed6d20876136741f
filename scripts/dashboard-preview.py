#!/usr/bin/env python3
"""Draws a preview of a Grafana dashboard from a real Prometheus: each panel's PromQL is run
against the Prometheus HTTP API over [start, end] (query_range; a stat panel shows the last
value), and the panels are laid out on the dashboard's 24-column grid with matplotlib.

Grafana's own variables are given the values a default view has: $__rate_interval -> 30s,
$instance -> .* (every instance). Used by scripts/dashboard-preview.
"""
import argparse
import json
import math
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"Prometheus refused {expr!r}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    text = fmt or ""
    for k, v in labels.items():
        text = text.replace("{{" + k + "}}", v)
    return text or ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")


def expand(expr):
    return expr.replace("$__rate_interval", "30s").replace('"$instance"', '".*"')


def draw_panel(ax, panel, prom, start, end, step):
    ax.set_title(panel["title"], fontsize=9, loc="left")
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    series = []
    for t in panel["targets"]:
        for s in query_range(prom, expand(t["expr"]), start, end, step):
            pts = [(float(ts) - start, float(v)) for ts, v in s["values"] if not math.isnan(float(v))]
            if pts:
                series.append((legend(t.get("legendFormat"), s["metric"]), pts))
    if panel["type"] == "stat":
        ax.axis("off")
        if not series:
            ax.text(0.5, 0.45, "no data", ha="center", va="center", fontsize=12, color="gray")
            return
        text = "   ".join(f"{name}: {pts[-1][1]:.4g}" if len(series) > 1 else f"{pts[-1][1]:.4g}"
                           for name, pts in series)
        ax.text(0.5, 0.45, text + ("" if len(series) > 1 else f" {unit}" if unit not in ("short", "") else ""),
                ha="center", va="center", fontsize=14 if len(series) == 1 else 9, weight="bold")
        return
    for name, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.tick_params(labelsize=7)
    ax.set_xlabel("seconds into the run", fontsize=7)
    ax.set_ylabel(unit, fontsize=7)
    if series:
        ax.legend(fontsize=6, loc="upper left")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prometheus", required=True)
    p.add_argument("--dashboard", required=True)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--end", type=float, required=True)
    p.add_argument("--png", required=True)
    a = p.parse_args()
    dash = json.load(open(a.dashboard))
    panels = dash["panels"]
    rows = max(pp["gridPos"]["y"] + pp["gridPos"]["h"] for pp in panels)
    fig = plt.figure(figsize=(16, rows * 0.4))
    step = max(2, int((a.end - a.start) / 120))
    for panel in panels:
        g = panel["gridPos"]
        # Grid units to figure fractions (24 columns; the rows from the top), with a margin.
        left, width = g["x"] / 24 + 0.03, g["w"] / 24 - 0.045
        # The top 4% holds the title.
        height = 0.96 * g["h"] / rows - 0.045
        bottom = 0.96 * (1 - (g["y"] + g["h"]) / rows) + 0.03
        draw_panel(fig.add_axes([left, bottom, width, height]), panel, a.prometheus, a.start, a.end, step)
    fig.suptitle(f"{dash['title']} dashboard: its queries against a real Prometheus scraping a hub under load "
                 f"(a preview drawn by scripts/dashboard-preview, not Grafana)", fontsize=10, y=0.999)
    fig.savefig(a.png, dpi=80)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
