#!/usr/bin/env python3
"""The many-peer bench's results.tsv (impl, peers, metric, value) as a markdown table: one row
per metric, one column per (implementation, peer count)."""
import sys
from collections import OrderedDict

rows = [
    ("setconf_s", "`wg setconf` (s)"),
    ("rss_empty_kib", "RSS empty daemon (KiB)"),
    ("rss_loaded_kib", "RSS after setconf (KiB)"),
    ("bytes_per_peer", "bytes per idle peer"),
    ("rtt_ms", "idle RTT, median (ms)"),
    ("tcp_mbps", "one-stream TCP (Mbit/s)"),
    ("dump_s", "`wg show dump` (s)"),
    ("dump_gap_ms", "longest ping gap during the dump (ms)"),
    ("handshakes_s", "all played peers have a session (s)"),
    ("rtt_after_ms", "idle RTT with every session up (ms)"),
    ("rss_sessions_kib", "RSS with every session up (KiB)"),
    ("remove_s", "`wg syncconf` removing all (s)"),
    ("remove_gap_ms", "longest ping gap during the removal (ms)"),
    ("rss_removed_kib", "RSS after the removal (KiB)"),
]
data = OrderedDict()
for line in open(sys.argv[1]):
    impl, n, metric, value = line.rstrip("\n").split("\t")
    data.setdefault((impl, n), {})[metric] = value
cols = list(data)
print("# Many-peer bench: latest results\n")
print("| | " + " | ".join(f"{i} {int(n):,}" for i, n in cols) + " |")
print("|---|" + "---|" * len(cols))
for key, label in rows:
    print(f"| {label} | " + " | ".join(data[c].get(key, "-") for c in cols) + " |")
