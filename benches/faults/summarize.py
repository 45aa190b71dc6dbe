#!/usr/bin/env python3
"""Turns the fault bench's results.tsv (impl, scenario, metric, value) into a markdown table,
one column per implementation, in the order the scenarios ran."""
import sys
from collections import OrderedDict

path, impls = sys.argv[1], sys.argv[2:]
data = OrderedDict()
for line in open(path):
    impl, scen, metric, value = line.rstrip("\n").split("\t")
    data.setdefault(scen, {}).setdefault(impl, {})[metric] = value


def cell(m):
    if not m:
        return "-"
    if "udp_sent" in m:
        text = (f"lost {m['udp_lost']} of {m['udp_sent']} (link dropped {m['link_dropped']}), "
                f"dup {m['udp_dup']}, reordered {m['udp_reordered']}")
        if "tcp_mbps" in m:
            text += f"; TCP {m['tcp_mbps']} Mbit/s"
        return text
    if "honest_handshake_s" in m:
        return (f"TCP {m.get('tcp_mbps', '-')} Mbit/s during the flood; honest fresh handshake "
                f"{m['honest_handshake_s']} s (flood sent {m.get('flood_sent', '?')})")
    if "recovery_s" in m:
        return f"{m['recovery_s']} s"
    if "cycles" in m:
        return (f"{m['cycles']} cycles, RSS {m['rss_first_kib']} → {m['rss_last_kib']} KiB "
                f"(max {m['rss_max_kib']}), {m['fds']} fds, {m['threads']} threads, "
                f"ping after: {'yes' if m['ping_after'] == '1' else 'NO'}")
    return ", ".join(f"{k} {v}" for k, v in m.items())


print("# Fault suite: latest results\n")
print("| scenario | " + " | ".join(impls) + " |")
print("|---|" + "---|" * len(impls))
for scen, per in data.items():
    print(f"| {scen} | " + " | ".join(cell(per.get(i)) for i in impls) + " |")
