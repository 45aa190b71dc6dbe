#!/usr/bin/env python3
"""Markdown summary of benches/tunnel/run.sh measurements.

usage: summarize.py RESULTS.tsv RUNS IMPL=LABEL...

RESULTS.tsv has one measurement per line: implementation, run, metric, value (tab-separated).
Prints one table (median and min-max over the runs of each metric and implementation) and,
when tandem has throughput numbers, tandem's ratio to each other tunnel implementation.
"""

import statistics
import sys
from collections import defaultdict

# (metric key, column title, decimals)
METRICS = [
    ("tcp1", "TCP 1 stream Mbit/s", 0),
    ("tcp4", "TCP 4 streams Mbit/s", 0),
    ("rtt", "idle RTT ms", 3),
    ("cpu_a", "CPU A %", 0),
    ("cpu_b", "CPU B %", 0),
    ("udp_rcvbuf", "UDP rcvbuf errs", 0),
    ("udp_sndbuf", "UDP sndbuf errs", 0),
    ("tun_rx_drop", "TUN rx drops", 0),
    ("tun_tx_drop", "TUN tx drops", 0),
]
PEERS = ["wireguard-go", "boringtun", "gotatun"]


def fmt(x, decimals):
    return f"{x:.{decimals}f}"


def cell(values, decimals):
    if not values:
        return "-"
    med, lo, hi = statistics.median(values), min(values), max(values)
    if fmt(lo, decimals) == fmt(hi, decimals):
        return fmt(med, decimals)
    return f"{fmt(med, decimals)} ({fmt(lo, decimals)}–{fmt(hi, decimals)})"


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    path, runs = argv[0], int(argv[1])
    labels = dict(a.split("=", 1) for a in argv[2:])
    data = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            impl, _run, metric, value = parts
            try:
                data[impl][metric].append(float(value))
            except ValueError:
                continue

    head = ["implementation", "runs ok"] + [title for _, title, _ in METRICS]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * len(METRICS)) + "|")
    for impl, label in labels.items():
        row = [label, f"{len(data[impl]['ok'])}/{runs}"]
        for key, _title, decimals in METRICS:
            row.append(cell(data[impl][key], decimals))
        print("| " + " | ".join(row) + " |")
    print()
    print("Cells: median over the runs, then (min–max) when they differ; '-' = not measured.")

    tandem = data.get("tandem")
    if not tandem or not tandem["tcp1"]:
        return
    lines = []
    for peer in PEERS:
        if peer not in labels or not data[peer]["tcp1"]:
            continue
        parts = []
        for key, name in (("tcp1", "1 stream"), ("tcp4", "4 streams")):
            t, p = data["tandem"][key], data[peer][key]
            if t and p and statistics.median(p) > 0:
                ratio = statistics.median(t) / statistics.median(p)
                parts.append(f"{name} {ratio:.2f}x")
        if parts:
            lines.append(f"- tandem / {labels[peer]}: " + ", ".join(parts))
    if lines:
        print()
        print("tandem's median TCP throughput relative to each peer's median:")
        print()
        print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
