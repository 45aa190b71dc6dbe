#!/usr/bin/env bash
# Many-peer bench: a server (tandem or wireguard-go, both in `-f IFACE` mode, configured by
# `wg setconf`) with N peers, side by side in one run, for each N in PEERS.
#
# Namespaces: S (the server) and C (the clients), joined by a veth pair. In C, one real
# tandem client is peer 0 (it pings and runs iperf3); `loadgen` (benches/manypeers/loadgen.rs)
# plays peers 1..N-1, each a tandem core with its own key, source address and port.
#
# Per implementation and N: empty-daemon RSS; `wg setconf` time and RSS after (bytes per
# peer); idle RTT (median of 200 pings) and one-stream TCP; `wg show dump` time and the
# longest gap between ping replies (every 2 ms) while it runs; the time until all N-1 played
# peers have a session after they all start a handshake at once, and the idle RTT after it;
# removal of all played peers by `wg syncconf` (time, longest ping gap).
#
# Usage (as root):  bash benches/manypeers/run.sh
# Environment:  PEERS="1000 10000 100000"  IMPLS="tandem wireguard-go"  TCP_SECONDS=5
#               TANDEM=<repo>/target/release/tandem  OUT=benches/manypeers/results-latest.md
#               KEEP_WORK=0
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-1000 10000 100000}
IMPLS=${IMPLS:-tandem wireguard-go}
TCP_SECONDS=${TCP_SECONDS:-5}
TANDEM=${TANDEM:-$ROOT/target/release/tandem}
LOADGEN=${LOADGEN:-$ROOT/target/release/examples/loadgen}
OUT=${OUT:-$HERE/results-latest.md}
KEEP_WORK=${KEEP_WORK:-0}
# Peers per loadgen process: one socket each, under the open-file limit (see loadgen.rs).
CHUNK=${CHUNK:-15000}
SEED=${SEED:-42}

say() { printf '[manypeers] %s\n' "$*" >&2; }
die() { printf '[manypeers] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN devices)"
for tool in ip wg iperf3 ping python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install iproute2 wireguard-tools iperf3 iputils-ping python3)"
done
if [[ ! -x $TANDEM || ! -x $LOADGEN ]]; then
    say "cargo build --release (tandem and the loadgen example)"
    (cd "$ROOT" && cargo build --release --bin tandem --example loadgen) >&2
fi

NSS="mpS-$$"
NSC="mpC-$$"
IFS_="mpws$$"
IFC="mpwc$$"
OUTER_S=10.90.0.1
OUTER_C=10.90.0.2
SOURCES=10.91.0.0/16
INNER_S=10.63.0.1
PORT=51820
UAPI_DIR=/var/run/wireguard
WORK=$(mktemp -d /tmp/manypeers.XXXXXX)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
PIDS=()
SERVER=""
CLIENT=""

# alive, stop_pid, remove_netns
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

cleanup() {
    local rc=$? pid ns
    trap - EXIT INT TERM
    for pid in "$SERVER" "$CLIENT" "${PIDS[@]}"; do stop_pid "$pid"; done
    remove_netns "$NSS" "$NSC"
    rm -f "$UAPI_DIR/$IFS_.sock" "$UAPI_DIR/$IFC.sock"
    if [[ $KEEP_WORK == 1 || $rc -ne 0 ]]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NSS"
ip netns add "$NSC"
ip -n "$NSS" link add veth0 type veth peer name veth0 netns "$NSC"
ip -n "$NSS" addr add "$OUTER_S/24" dev veth0
ip -n "$NSC" addr add "$OUTER_C/24" dev veth0
for ns in "$NSS" "$NSC"; do ip -n "$ns" link set lo up; ip -n "$ns" link set veth0 up; done
# The played peers' source addresses: local to C without adding 65k addresses, routed from S.
ip -n "$NSC" route add local "$SOURCES" dev lo
ip -n "$NSS" route add "$SOURCES" via "$OUTER_C"
mkdir -p "$UAPI_DIR"

declare -A BIN=([tandem]=$TANDEM)
ACTIVE=()
for impl in $IMPLS; do
    case $impl in
    tandem) ACTIVE+=(tandem) ;;
    wireguard-go)
        if command -v wireguard-go >/dev/null; then
            BIN[wireguard-go]=$(command -v wireguard-go)
            ACTIVE+=(wireguard-go)
        else
            say "wireguard-go: skipped (not installed)"
        fi
        ;;
    *) die "unknown implementation $impl" ;;
    esac
done

SERVER_KEY=$(wg genkey)
SERVER_PUB=$(wg pubkey <<<"$SERVER_KEY")
CLIENT_KEY=$("$LOADGEN" private-key "$SEED" 0)
CLIENT_INNER=$("$LOADGEN" address 0)

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

# The real client: tandem in C as peer 0 (the same client for every server).
start_client() {
    cat >"$WORK/client.toml" <<EOF
[interface]
name = "$IFC"
private_key = "$CLIENT_KEY"
listen_port = 51821
address = ["$CLIENT_INNER/32"]

[[peer]]
public_key = "$SERVER_PUB"
endpoint = "$OUTER_S:$PORT"
allowed_ips = ["$INNER_S/32"]
EOF
    ip netns exec "$NSC" "$TANDEM" up "$WORK/client.toml" >"$WORK/client.log" 2>&1 &
    CLIENT=$!
    for ((i = 0; i < 100; i++)); do
        ip -n "$NSC" link show "$IFC" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "the client did not come up: $(tail -n 5 "$WORK/client.log")"
}

start_server() {
    local impl=$1 i
    rm -f "$UAPI_DIR/$IFS_.sock"
    ip netns exec "$NSS" "${BIN[$impl]}" -f "$IFS_" >"$WORK/server-$impl.log" 2>&1 &
    SERVER=$!
    for ((i = 0; i < 150; i++)); do
        [[ -S $UAPI_DIR/$IFS_.sock ]] && break
        alive "$SERVER" || die "$impl exited: $(tail -n 5 "$WORK/server-$impl.log")"
        sleep 0.1
    done
    sleep 0.5
}

mbps_of_json() {
    python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)
    print("%.0f" % (r["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception:
    print("failed")'
}

ping_median() {
    ip netns exec "$NSC" ping -n -c 200 -i 0.01 -W 1 "$INNER_S" 2>/dev/null | python3 -c '
import re, statistics, sys
t = [float(m) for m in re.findall(r"time=([0-9.]+)", sys.stdin.read())]
print(f"{statistics.median(t):.3f}" if t else "failed")'
}

# gap_during TAG CMD...: runs CMD in S while C pings every 2 ms; prints "SECONDS GAP_MS":
# how long CMD took and the longest time between two ping replies while it ran.
gap_during() {
    local tag=$1 ppid t0 t1
    shift
    ip netns exec "$NSC" ping -D -n -i 0.002 -W 1 -w 600 "$INNER_S" >"$WORK/gap-$tag.out" 2>&1 &
    ppid=$!
    sleep 1
    t0=$(now)
    "$@" >/dev/null 2>>"$WORK/gap-$tag.err" || echo "failed: $*" >>"$WORK/gap-$tag.err"
    t1=$(now)
    sleep 0.5
    kill -INT "$ppid" 2>/dev/null || true
    wait "$ppid" 2>/dev/null || true
    python3 - "$WORK/gap-$tag.out" "$t0" "$t1" <<'EOF'
import re, sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ts = [float(m) for m in re.findall(r"^\[([0-9.]+)\].*bytes from", open(path).read(), re.M)]
# Replies from just before the command to just after it: the gap around it counts.
before = [t for t in ts if t <= t0][-1:]
inside = [t for t in ts if t0 < t <= t1]
after = [t for t in ts if t > t1][:1]
w = before + inside + after
gap = max((b - a for a, b in zip(w, w[1:])), default=float("nan"))
print(f"{t1 - t0:.3f} {gap * 1e3:.1f}")
EOF
}

# handshake_storm N: played peers 1..N-1 all start a handshake at once (one loadgen process
# per CHUNK peers, started together); prints the seconds until the last one has a session.
handshake_storm() {
    local n=$1 from=1 procs=() start count pid
    start=$(python3 -c 'import time; print(f"{time.time() + 3 + '"$n"' / 20000:.3f}")')
    while ((from < n)); do
        count=$((n - from < CHUNK ? n - from : CHUNK))
        ip netns exec "$NSC" "$LOADGEN" run "$OUTER_S:$PORT" "$SERVER_PUB" "$INNER_S" "$count" \
            "$SEED" --from "$from" --sources "$SOURCES" --start-at "$start" --timeout 120 \
            >"$WORK/loadgen-$from.out" 2>"$WORK/loadgen-$from.err" &
        procs+=($!)
        PIDS+=($!)
        from=$((from + count))
    done
    local failed=0
    for pid in "${procs[@]}"; do wait "$pid" || failed=1; done
    if ((failed)); then
        echo "failed($(cat "$WORK"/loadgen-*.out | awk '{ s += $2 } END { print s + 0 }') of $((n - 1)))"
        return
    fi
    cat "$WORK"/loadgen-*.out | awk -v s="$start" '{ t = $NF; if (t > m) m = t } END { printf "%.2f\n", m - s }'
    rm -f "$WORK"/loadgen-*.out
}

start_client
for impl in "${ACTIVE[@]}"; do
    for n in $PEERS; do
        say "=== $impl, $n peers"
        start_server "$impl"
        rss0=$(rss_kib "$SERVER")
        { printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n' "$SERVER_KEY" "$PORT"
          "$LOADGEN" peers "$n" "$SEED"; } >"$WORK/server.conf"
        { printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n' "$SERVER_KEY" "$PORT"
          "$LOADGEN" peers 1 "$SEED"; } >"$WORK/base.conf"
        t0=$(now)
        if ! ip netns exec "$NSS" wg setconf "$IFS_" "$WORK/server.conf" 2>"$WORK/setconf.err"; then
            why=$(grep -o 'too many peers' "$WORK/server-$impl.log" | head -n1 || true)
            record "$impl" "$n" setconf_s "refused${why:+ ($why)}"
            stop_pid "$SERVER"; SERVER=""
            continue
        fi
        t1=$(now)
        record "$impl" "$n" setconf_s "$(elapsed "$t0" "$t1")"
        ip -n "$NSS" addr add "$INNER_S/32" dev "$IFS_"
        ip -n "$NSS" link set "$IFS_" up
        ip -n "$NSS" route add 10.64.0.0/10 dev "$IFS_"
        sleep 1
        rss1=$(rss_kib "$SERVER")
        record "$impl" "$n" rss_empty_kib "$rss0"
        record "$impl" "$n" rss_loaded_kib "$rss1"
        record "$impl" "$n" bytes_per_peer $(((rss1 - rss0) * 1024 / n))
        for ((i = 0; i < 20; i++)); do
            ip netns exec "$NSC" ping -n -q -c1 -W1 "$INNER_S" >/dev/null 2>&1 && break
        done
        record "$impl" "$n" rtt_ms "$(ping_median)"
        ip netns exec "$NSS" iperf3 -s -1 -B "$INNER_S" >/dev/null 2>&1 &
        ipid=$!
        PIDS+=("$ipid")
        sleep 0.3
        mbps=$(timeout $((TCP_SECONDS + 30)) ip netns exec "$NSC" iperf3 -c "$INNER_S" \
            -t "$TCP_SECONDS" -J 2>/dev/null | mbps_of_json || echo failed)
        stop_pid "$ipid"
        record "$impl" "$n" tcp_mbps "$mbps"
        read -r secs gap < <(gap_during "dump-$impl-$n" ip netns exec "$NSS" wg show "$IFS_" dump)
        record "$impl" "$n" dump_s "$secs"
        record "$impl" "$n" dump_gap_ms "$gap"
        if ((n > 1)); then
            record "$impl" "$n" handshakes_s "$(handshake_storm "$n")"
            record "$impl" "$n" rtt_after_ms "$(ping_median)"
            record "$impl" "$n" rss_sessions_kib "$(rss_kib "$SERVER")"
        fi
        read -r secs gap < <(gap_during "remove-$impl-$n" ip netns exec "$NSS" wg syncconf "$IFS_" "$WORK/base.conf")
        record "$impl" "$n" remove_s "$secs"
        record "$impl" "$n" remove_gap_ms "$gap"
        record "$impl" "$n" rss_removed_kib "$(rss_kib "$SERVER")"
        stop_pid "$SERVER"
        SERVER=""
        say "$(grep -P "^$impl\t$n\t" "$RESULTS" | cut -f3,4 | tr '\t\n' '= ')"
    done
done

python3 "$HERE/summarize.py" "$RESULTS" >"$OUT"
say "results in $OUT"
cat "$OUT"
