#!/usr/bin/env python3
"""Turns the JSON results scripts/bench-cluster leaves in its out directory into the cluster section
of BENCHMARKS.md (between the markers below; the rest of the file is left as it is, and
scripts/bench-report.py keeps this section when it rewrites the rest). With --smoke it checks that
every part worked (not how fast) and writes only into the out directory.

Usage (scripts/bench-cluster calls it): bench-cluster-report.py --out DIR --md FILE --seconds S
        --trials N --rounds R [--smoke]
"""
import argparse
import glob
import json
import os
import sys

from bench_section import write_section

BEGIN = "<!-- cluster run: begin -->"
END = "<!-- cluster run: end -->"


def merged(out, label, mode):
    """The rounds of one side's runs, summed: totals and the worst p99 of any round."""
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{label}-{mode}.r*.json")))]
    if not runs:
        return None
    total = lambda k: sum(r.get(k) or 0 for r in runs)
    m = {"rounds": len(runs), "seconds": total("seconds"), "server_cpu": total("server_cpu_seconds"),
         "database_cpu": total("database_cpu_seconds")}
    if mode == "connect":
        m["count"] = total("connects")
        m["failures"] = total("failures")
        m["p99_ms"] = max(r["latency_ms"]["p99"] for r in runs)
    else:
        m["count"] = total("acknowledged")
        m["p99_ms"] = max(r["puback_latency_ms"]["p99"] for r in runs)
    return m


def row(name, sqlite, postgres, ratio, target, met, digits=2):
    fmt = lambda v: "–" if v is None else f"{v:,.{digits}f}"
    verdict = "" if met is None else ("met" if met else "**not met**")
    return f"| {name} | {fmt(sqlite)} | {fmt(postgres)} | {ratio} | {target} | {verdict} |"


def section(a, c_sql, c_pg, t_sql, t_pg, cl):
    cpu_conn = lambda m: m["server_cpu"] * 1000 / max(m["count"], 1)
    per_cpu = lambda m: m["count"] / m["server_cpu"] if m["server_cpu"] else 0
    conn_ratio = cpu_conn(c_pg) / cpu_conn(c_sql) if cpu_conn(c_sql) else float("inf")
    tele_ratio = per_cpu(t_pg) / per_cpu(t_sql) if per_cpu(t_sql) else 0
    db_us = t_pg["database_cpu"] * 1e6 / max(t_pg["count"], 1)
    lines = [
        BEGIN,
        "## Several nodes on PostgreSQL (`scripts/bench --cluster`)",
        "",
        f"One node on SQLite beside one node on PostgreSQL (a private server on the same machine), "
        f"the same generator and identities, {a.rounds} round(s) of {max(a.seconds // 2, 1)} s per "
        f"side, alternating; then three nodes sharing the database for {a.trials} trials of each "
        "latency. Everything shares this machine's cores (the database too), so each rate comes "
        "with its CPU cost.",
        "",
        "| figure | SQLite node | PostgreSQL node | ratio | target | |",
        "|---|---|---|---|---|---|",
        row("server CPU per full connect (ms)", cpu_conn(c_sql), cpu_conn(c_pg), f"{conn_ratio:.2f}x",
            "within 10% (≤ 1.10x)", conn_ratio <= 1.10, 3),
        row("full connects/s", c_sql["count"] / c_sql["seconds"], c_pg["count"] / c_pg["seconds"], "", "", None, 0),
        row("durable QoS 1 messages per server CPU-second", per_cpu(t_sql), per_cpu(t_pg),
            f"{tele_ratio:.2f}x", "at least half (≥ 0.50x)", tele_ratio >= 0.5, 0),
        row("durable QoS 1 messages/s", t_sql["count"] / t_sql["seconds"], t_pg["count"] / t_pg["seconds"],
            "", "", None, 0),
        row("PUBACK p99 (ms)", t_sql["p99_ms"], t_pg["p99_ms"], "", "", None),
        row("database CPU per message (µs)", None, db_us, "", "reported", None, 1),
        "",
        "| three nodes | p50 (ms) | p99 (ms) | max (ms) | target | |",
        "|---|---|---|---|---|---|",
    ]
    for key, name, target in (("trust_change", "CA deleted on node 1 → last session closed on nodes 2 and 3", 1000),
                              ("takeover", "connect on node 3 → old session on node 2 closed", 1000),
                              ("direct_method", "direct method through node 1 to a device on node 3", None)):
        s = cl[key]
        verdict = "" if target is None else ("met" if s["p99_ms"] < target else "**not met**")
        lines.append(f"| {name} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} | "
                     f"{'p99 < 1 s' if target else 'reported'} | {verdict} |")
    lines += ["", f"Raw results: `{a.out}/*.json`.", END]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    parts = {(l, m): merged(a.out, l, m) for l in ("sqlite", "postgres") for m in ("connect", "telemetry")}
    problems = [f"no {l} {m} result in {a.out}" for (l, m), v in parts.items() if v is None]
    try:
        cl = json.load(open(os.path.join(a.out, "cluster.json")))
    except (OSError, ValueError) as e:
        cl = None
        problems.append(f"no cluster.json: {e}")
    if problems:
        sys.exit("scripts/bench-cluster: " + "; ".join(problems))
    for (l, m), v in parts.items():
        if v["count"] == 0:
            problems.append(f"the {l} {m} run completed nothing")
        if m == "connect" and v["failures"]:
            problems.append(f"the {l} connect run had {v['failures']} failures")
    for key in ("trust_change", "takeover", "direct_method"):
        if cl[key]["trials"] != a.trials:
            problems.append(f"{key}: {cl[key]['trials']} trials of {a.trials}")
    if problems:
        sys.exit("scripts/bench-cluster: " + "; ".join(problems))
    text = section(a, parts["sqlite", "connect"], parts["postgres", "connect"],
                   parts["sqlite", "telemetry"], parts["postgres", "telemetry"], cl)
    write_section(a.md, BEGIN, END, text)
    # A smoke run's figures mean nothing: its section goes only to its own file.
    if not a.smoke:
        print(text)
    else:
        print(f"scripts/bench --cluster --smoke: every part worked; {a.md} written (figures from a "
              "run this short mean nothing)")


if __name__ == "__main__":
    main()
