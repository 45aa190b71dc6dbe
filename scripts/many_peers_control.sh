#!/usr/bin/env bash
# Control-plane work against forwarding with many peers (issue 12): one daemon A holds N
# idle peers plus one real peer B in another namespace; B pings A through the tunnel every
# millisecond while A serves `wg show dump` (and then a `wg syncconf` that removes every idle
# peer). Prints the time of each dump and of the removal, and the ping's max RTT and loss
# during each: a stall of the data plane shows up as the max RTT (or as loss).
#
# Usage (as root): scripts/many_peers_control.sh BINARY N [DUMPS]
#   BINARY: a tandem binary (release build); N: idle peers; DUMPS: dumps to time (3).
# Everything lives in two namespaces of its own (veth between them) and is removed at exit.
set -euo pipefail
umask 077

BIN=${1:?binary}
N=${2:?peers}
DUMPS=${3:-3}
TAG=mp$$
A=${TAG}a B=${TAG}b
IFA=${TAG}ta IFB=${TAG}tb
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip -n "$A" link add "${TAG}va" type veth peer name "${TAG}vb" netns "$B"
ip -n "$A" addr add 192.168.88.1/24 dev "${TAG}va"
ip -n "$B" addr add 192.168.88.2/24 dev "${TAG}vb"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set "${TAG}va" up
ip -n "$B" link set "${TAG}vb" up

mkdir -p /var/run/wireguard
# The driver's debug line per request served says how long the loop's longest turn took
# (builds that have it; others print nothing there).
ip netns exec "$A" env RUST_LOG=info,tandem::driver::job=debug "$BIN" -f "$IFA" 2>"$WORK/a.log" &
PIDS+=($!)
ip netns exec "$B" "$BIN" -f "$IFB" 2>"$WORK/b.log" &
PIDS+=($!)
for i in $(seq 100); do
    [[ -S /var/run/wireguard/$IFA.sock && -S /var/run/wireguard/$IFB.sock ]] && break
    sleep 0.1
done

wg genkey >"$WORK/a.key"
wg genkey >"$WORK/b.key"
PUB_A=$(wg pubkey <"$WORK/a.key")
PUB_B=$(wg pubkey <"$WORK/b.key")
wg set "$IFA" private-key "$WORK/a.key" listen-port 51811 \
    peer "$PUB_B" endpoint 192.168.88.2:51812 allowed-ips 10.98.0.2/32
wg set "$IFB" private-key "$WORK/b.key" listen-port 51812 \
    peer "$PUB_A" endpoint 192.168.88.1:51811 allowed-ips 10.98.0.1/32
ip -n "$A" addr add 10.98.0.1/24 dev "$IFA"
ip -n "$B" addr add 10.98.0.2/24 dev "$IFB"
ip -n "$A" link set "$IFA" up
ip -n "$B" link set "$IFB" up
ip netns exec "$B" ping -c 3 -i 0.2 -W 2 10.98.0.1 >/dev/null

# N idle peers, each with its own key and one /32 (keys: any 32 bytes will do).
python3 - "$N" "$PUB_B" >"$WORK/peers.conf" <<'EOF'
import base64, sys
n = int(sys.argv[1])
print("[Interface]")
for i in range(n):
    key = base64.b64encode(i.to_bytes(4, "little") + b"\x5a" * 28).decode()
    print(f"[Peer]\nPublicKey = {key}\nAllowedIPs = 10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32")
EOF
# The real peer again, for syncconf to keep.
{
    echo "[Interface]"
    echo "PrivateKey = $(cat "$WORK/a.key")"
    echo "ListenPort = 51811"
    echo "[Peer]"
    echo "PublicKey = $PUB_B"
    echo "Endpoint = 192.168.88.2:51812"
    echo "AllowedIPs = 10.98.0.2/32"
} >"$WORK/only_b.conf"

now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.0f}')" "$@"; }

# Pings every millisecond from B during "$@"; prints "max RTT ms, lost" of the pings.
during() {
    ip netns exec "$B" ping -i 0.001 -W 1 10.98.0.1 >"$WORK/ping.txt" 2>&1 &
    local ping=$!
    sleep 0.3
    "$@"
    sleep 0.3
    kill -INT "$ping"
    wait "$ping" || true
    local loss max
    loss=$(grep -o '[0-9.]*% packet loss' "$WORK/ping.txt" || echo "?")
    max=$(grep -o 'rtt [^=]*= [0-9./]*' "$WORK/ping.txt" | cut -d/ -f6 || echo "?")
    echo "ping max ${max} ms, ${loss}"
}

echo "tandem=$BIN peers=$N"
echo "baseline (no control work, 1 s): $(during sleep 1)"
add() {
    local s e
    s=$(now)
    wg addconf "$IFA" "$WORK/peers.conf"
    e=$(now)
    echo -n "addconf of $N peers: $(ms "$s" "$e") ms; "
}
during add
for d in $(seq "$DUMPS"); do
    dump() {
        local s e
        s=$(now)
        wg show "$IFA" dump | wc -l >"$WORK/lines"
        e=$(now)
        echo -n "dump $d: $(ms "$s" "$e") ms, $(cat "$WORK/lines") lines; "
    }
    during dump
done
remove() {
    local s e
    s=$(now)
    wg syncconf "$IFA" "$WORK/only_b.conf"
    e=$(now)
    echo -n "syncconf removing $N: $(ms "$s" "$e") ms, $(wg show "$IFA" peers | wc -l) left; "
}
during remove
echo "loop turns with control work (A's log):"
grep -o 'control requests served.*' "$WORK/a.log" | sed 's/\x1b\[[0-9;]*m//g' || echo "  (none logged)"
