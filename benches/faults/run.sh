#!/usr/bin/env bash
# Fault suite: tandem side by side with wireguard-go (when installed) under an impaired link,
# restarts and (LONG=1) a rekey under sequence-numbered traffic and a soak of peer churn.
#
# Two namespaces joined by a veth pair; both daemons run in wireguard-go's foreground mode
# (`-f IFACE`) and are configured by `wg setconf`, so every implementation gets the same
# commands. A's packets to B pass through `faultkit relay` (benches/faults/faultkit.rs), a UDP
# relay in A's namespace that loses, duplicates, reorders and delays datagrams with a seeded
# generator and counts what it did (the kernels here have no sch_netem).
#
# Usage (as root):  bash benches/faults/run.sh
# Environment:
#   IMPLS="tandem wireguard-go"   TANDEM=<repo>/target/release/tandem (built if missing)
#   COUNT=20000 RATE=10000        datagrams per impairment profile, and their rate per second
#   TCP_SECONDS=5                 iperf3 seconds per profile
#   FLOOD_RATE=50000              handshake initiations per second in the flood scenario
#   LONG=0                        1 adds the rekey run (REKEY_SECONDS=130) and the soak
#                                 (SOAK_SECONDS=600 of adding and removing 1000 peers)
#   OUT=benches/faults/results-latest.md   KEEP_WORK=0 (1 keeps logs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

IMPLS=${IMPLS:-tandem wireguard-go}
TANDEM=${TANDEM:-$ROOT/target/release/tandem}
FAULTKIT=${FAULTKIT:-$ROOT/target/release/examples/faultkit}
COUNT=${COUNT:-20000}
RATE=${RATE:-10000}
TCP_SECONDS=${TCP_SECONDS:-5}
FLOOD_RATE=${FLOOD_RATE:-50000}
LONG=${LONG:-0}
REKEY_SECONDS=${REKEY_SECONDS:-130}
SOAK_SECONDS=${SOAK_SECONDS:-600}
OUT=${OUT:-$HERE/results-latest.md}
KEEP_WORK=${KEEP_WORK:-0}

say() { printf '[faults] %s\n' "$*" >&2; }
die() { printf '[faults] error: %s\n' "$*" >&2; exit 1; }

for v in COUNT RATE TCP_SECONDS FLOOD_RATE REKEY_SECONDS SOAK_SECONDS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN devices): sudo -E bash $0"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (load the tun module)"
for tool in ip wg iperf3 ping python3 timeout; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing (apt-get install --no-install-recommends iproute2 wireguard-tools iperf3 iputils-ping python3)"
done

if [[ ! -x $TANDEM || ! -x $FAULTKIT ]]; then
    say "cargo build --release (tandem and the faultkit example)"
    (cd "$ROOT" && cargo build --release --bin tandem --example faultkit) >&2
fi

NSA="tfA-$$"
NSB="tfB-$$"
IFA="tfwa$$"
IFB="tfwb$$"
OUTER_A=10.88.0.1
OUTER_B=10.88.0.2
TUN_A=10.87.0.1
TUN_B=10.87.0.2
PORT=51820
RELAY_PORT=40000
FLOW_PORT=9000
UAPI_DIR=/var/run/wireguard

WORK=$(mktemp -d /tmp/faultbench.XXXXXX)
mkdir -p "$WORK/logs"
RESULTS="$WORK/results.tsv" # impl, scenario, metric, value
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

DAEMON_A=""
DAEMON_B=""
RELAY_PID=""
PIDS=()

# alive, stop_pid, remove_netns
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

cleanup() {
    local rc=$? ns pid
    trap - EXIT INT TERM
    exec 7>&- 2>/dev/null || true
    for pid in "$RELAY_PID" "$DAEMON_A" "$DAEMON_B" "${PIDS[@]}"; do stop_pid "$pid"; done
    remove_netns "$NSA" "$NSB"
    rm -f "$UAPI_DIR/$IFA.sock" "$UAPI_DIR/$IFB.sock"
    if [[ $KEEP_WORK == 1 || $rc -ne 0 ]]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NSA"
ip netns add "$NSB"
ip -n "$NSA" link add veth0 type veth peer name veth0 netns "$NSB"
ip -n "$NSA" addr add "$OUTER_A/24" dev veth0
ip -n "$NSB" addr add "$OUTER_B/24" dev veth0
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; ip -n "$ns" link set veth0 up; done
# The flood's sources: 16 more addresses in A's namespace (B's cookie replies go back there).
FLOOD_SOURCES=()
for i in $(seq 100 115); do
    ip -n "$NSA" addr add "10.88.0.$i/24" dev veth0
    FLOOD_SOURCES+=("10.88.0.$i")
done
mkdir -p "$UAPI_DIR"

declare -A BIN=()
ACTIVE=()
for impl in $IMPLS; do
    case $impl in
    tandem) BIN[tandem]=$TANDEM; ACTIVE+=(tandem) ;;
    wireguard-go)
        if command -v wireguard-go >/dev/null; then
            BIN[wireguard-go]=$(command -v wireguard-go)
            ACTIVE+=(wireguard-go)
        else
            say "wireguard-go: skipped (not installed; apt-get install wireguard-go)"
        fi
        ;;
    *) die "unknown implementation '$impl' (known: tandem wireguard-go)" ;;
    esac
done

KEY_A=$(wg genkey)
KEY_B=$(wg genkey)
PUB_A=$(wg pubkey <<<"$KEY_A")
PUB_B=$(wg pubkey <<<"$KEY_B")

# Where A's config points for B: the relay's front, until the restart scenarios switch to the
# direct path (a restarted A is configured the way A ran before it was killed).
A_ENDPOINT=$OUTER_A:$RELAY_PORT

# start_side IMPL SIDE: starts side A or B in its namespace, configured with `wg setconf`; A
# reaches B at A_ENDPOINT, B reaches A directly. Sets DAEMON_A / DAEMON_B.
start_side() {
    local impl=$1 side=$2 ns ifname key peer endpoint tun peertun pid i conf
    if [[ $side == A ]]; then
        ns=$NSA ifname=$IFA key=$KEY_A peer=$PUB_B endpoint=$A_ENDPOINT tun=$TUN_A peertun=$TUN_B
    else
        ns=$NSB ifname=$IFB key=$KEY_B peer=$PUB_A endpoint=$OUTER_A:$PORT tun=$TUN_B peertun=$TUN_A
    fi
    rm -f "$UAPI_DIR/$ifname.sock"
    ip netns exec "$ns" "${BIN[$impl]}" -f "$ifname" >>"$WORK/logs/$impl-$side.log" 2>&1 &
    pid=$!
    for ((i = 0; i < 150; i++)); do
        [[ -S $UAPI_DIR/$ifname.sock ]] && ip -n "$ns" link show "$ifname" >/dev/null 2>&1 && break
        alive "$pid" || die "$impl $side exited at start: $(tail -n 5 "$WORK/logs/$impl-$side.log")"
        sleep 0.1
    done
    conf="$WORK/$side.conf"
    printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n[Peer]\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s/32\n' \
        "$key" "$PORT" "$peer" "$endpoint" "$peertun" >"$conf"
    ip netns exec "$ns" wg setconf "$ifname" "$conf"
    ip -n "$ns" addr replace "$tun/24" dev "$ifname"
    ip -n "$ns" link set "$ifname" mtu 1420 up
    if [[ $side == A ]]; then DAEMON_A=$pid; else DAEMON_B=$pid; fi
}

wait_ping() { # NS DEST SECONDS
    local i
    for ((i = 0; i < $3 * 2; i++)); do
        timeout 2 ip netns exec "$1" ping -n -q -c1 -W0.5 "$2" >/dev/null 2>&1 && return 0
    done
    return 1
}

relay_cmd() { echo "$*" >&7; }

# relay_dropped_to_back: the relay's count of datagrams it dropped towards B so far.
relay_dropped_to_back() {
    local before
    before=$(wc -l <"$WORK/relay.out")
    relay_cmd stats
    for ((i = 0; i < 50; i++)); do
        (($(wc -l <"$WORK/relay.out") >= before + 2)) && break
        sleep 0.05
    done
    grep '^to_back' "$WORK/relay.out" | tail -n1 | sed 's/.*dropped=\([0-9]*\).*/\1/'
}

# flow IMPL SCENARIO: COUNT sequence-numbered datagrams A -> B through the tunnel.
FLOW_TAG=0
flow() {
    local impl=$1 scen=$2 n=${3:-$COUNT} rate=${4:-$RATE} d0 d1 out rpid
    FLOW_TAG=$((FLOW_TAG + 1))
    d0=$(relay_dropped_to_back)
    ip netns exec "$NSB" "$FAULTKIT" recv "$TUN_B:$FLOW_PORT" "$FLOW_TAG" "$n" 3000 \
        $((n / rate + 60)) >"$WORK/recv.out" 2>>"$WORK/logs/faultkit.log" &
    rpid=$!
    PIDS+=("$rpid")
    sleep 0.3
    ip netns exec "$NSA" "$FAULTKIT" send "$TUN_B:$FLOW_PORT" "$FLOW_TAG" "$n" "$rate" 512 \
        >/dev/null 2>>"$WORK/logs/faultkit.log"
    wait "$rpid" || true
    d1=$(relay_dropped_to_back)
    read -r sent unique lost dups reordered <"$WORK/recv.out"
    record "$impl" "$scen" udp_sent "$sent"
    record "$impl" "$scen" udp_lost "$lost"
    record "$impl" "$scen" link_dropped $((d1 - d0))
    record "$impl" "$scen" udp_dup "$dups"
    record "$impl" "$scen" udp_reordered "$reordered"
    say "$impl $scen: sent $sent, lost $lost (link dropped $((d1 - d0))), duplicates $dups, reordered $reordered"
}

tcp() { # IMPL SCENARIO
    local json="$WORK/logs/iperf-$1-$2.json" spid mbps
    ip netns exec "$NSB" iperf3 -s -1 >/dev/null 2>&1 &
    spid=$!
    PIDS+=("$spid")
    sleep 0.3
    timeout $((TCP_SECONDS + 30)) ip netns exec "$NSA" iperf3 -c "$TUN_B" -t "$TCP_SECONDS" -J \
        --connect-timeout 5000 >"$json" 2>&1 || true
    stop_pid "$spid"
    mbps=$(python3 - "$json" <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as f:
        print(f'{json.load(f)["end"]["sum_received"]["bits_per_second"] / 1e6:.0f}')
except Exception:
    print("failed")
EOF
)
    record "$1" "$2" tcp_mbps "$mbps"
    say "$1 $2: TCP $mbps Mbit/s"
}

# recovery IMPL SIDE: kill -9 SIDE while the other side pings it every 20 ms; restart it;
# the time from the restarted daemon's configuration to the first answered ping.
recovery() {
    local impl=$1 side=$2 from to pid t_restart first
    if [[ $side == A ]]; then from=$NSB to=$TUN_A pid=$DAEMON_A; else from=$NSA to=$TUN_B pid=$DAEMON_B; fi
    ip netns exec "$from" ping -D -n -i 0.02 -W 1 -w 40 "$to" >"$WORK/ping-$side.out" 2>&1 &
    local ppid=$!
    PIDS+=("$ppid")
    sleep 1
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    sleep 0.5
    start_side "$impl" "$side"
    t_restart=$(date +%s.%N)
    first=""
    for ((i = 0; i < 300; i++)); do
        first=$(awk -v t="$t_restart" -F'[][]' '/bytes from/ && $2 > t { print $2; exit }' "$WORK/ping-$side.out")
        [[ -n $first ]] && break
        sleep 0.1
    done
    stop_pid "$ppid" INT
    if [[ -n $first ]]; then
        record "$impl" "restart-$side" recovery_s "$(python3 -c "print(f'{$first - $t_restart:.2f}')")"
    else
        record "$impl" "restart-$side" recovery_s ">30"
    fi
    say "$impl: recovery after kill -9 of $side: $(tail -n1 "$RESULTS" | cut -f4) s"
}

# flood IMPL: B is flooded with valid-mac1 initiations at FLOOD_RATE from 16 addresses of A's
# namespace. Meanwhile: TCP over the existing session, then an honest fresh handshake (A
# forgets B and learns it again) timed to the first answered ping.
flood() {
    local impl=$1 scen="flood-${FLOOD_RATE}-per-s" fpid t0 i ok=0
    ip netns exec "$NSA" "$FAULTKIT" flood "$OUTER_B:$PORT" "$PUB_B" "$FLOOD_RATE" \
        $((TCP_SECONDS + 18)) "${FLOOD_SOURCES[@]}" >"$WORK/flood.out" 2>>"$WORK/logs/faultkit.log" &
    fpid=$!
    PIDS+=("$fpid")
    sleep 1
    tcp "$impl" "$scen"
    ip netns exec "$NSA" wg set "$IFA" peer "$PUB_B" remove
    ip netns exec "$NSA" wg set "$IFA" peer "$PUB_B" endpoint "$A_ENDPOINT" allowed-ips "$TUN_B/32"
    t0=$(date +%s.%N)
    for ((i = 0; i < 150; i++)); do
        if ip netns exec "$NSA" ping -n -q -c1 -W0.1 "$TUN_B" >/dev/null 2>&1; then ok=1; break; fi
    done
    if ((ok)); then
        record "$impl" "$scen" honest_handshake_s "$(python3 -c "import time; print(f'{time.time() - $t0:.3f}')")"
    else
        record "$impl" "$scen" honest_handshake_s ">15"
    fi
    # The flood ends on its own (its count is printed then), at most TCP_SECONDS + 20 s in.
    wait "$fpid" || true
    record "$impl" "$scen" flood_sent "$(cat "$WORK/flood.out" 2>/dev/null || echo '?')"
    say "$impl flood: honest handshake $(grep -P "^$impl\t$scen\thonest" "$RESULTS" | cut -f4) s"
    sleep 2
}

# soak IMPL: SOAK_SECONDS of adding 1000 peers to B and removing them again; B's RSS, open
# descriptors and threads after each cycle.
soak() {
    local impl=$1 end cycles=0 rss fds thr first_rss="" max_rss=0
    python3 - "$WORK/churn.conf" <<'EOF'
import base64, os, sys
with open(sys.argv[1], "w") as f:
    for i in range(1000):
        f.write("[Peer]\nPublicKey = %s\nAllowedIPs = 10.%d.%d.%d/32\n\n" % (
            base64.b64encode(os.urandom(32)).decode(), 100 + i // 65536, (i // 256) % 256, i % 256))
EOF
    ip netns exec "$NSB" wg showconf "$IFB" >"$WORK/base.conf"
    end=$((SECONDS + SOAK_SECONDS))
    while ((SECONDS < end)); do
        ip netns exec "$NSB" wg addconf "$IFB" "$WORK/churn.conf"
        ip netns exec "$NSB" wg syncconf "$IFB" "$WORK/base.conf"
        cycles=$((cycles + 1))
        rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$DAEMON_B/status")
        [[ -n $first_rss ]] || first_rss=$rss
        ((rss > max_rss)) && max_rss=$rss
    done
    fds=$(ls "/proc/$DAEMON_B/fd" | wc -l)
    thr=$(awk '/^Threads/ { print $2 }' "/proc/$DAEMON_B/status")
    record "$impl" soak cycles "$cycles"
    record "$impl" soak rss_first_kib "$first_rss"
    record "$impl" soak rss_last_kib "$rss"
    record "$impl" soak rss_max_kib "$max_rss"
    record "$impl" soak fds "$fds"
    record "$impl" soak threads "$thr"
    wait_ping "$NSA" "$TUN_B" 10 && record "$impl" soak ping_after 1 || record "$impl" soak ping_after 0
    say "$impl soak: $cycles cycles, RSS $first_rss -> $rss KiB (max $max_rss), $fds fds, $thr threads"
}

PROFILES=(
    "clean|"
    "loss-1%|--loss 0.01"
    "reorder-25%|--reorder 0.25 --reorder-delay-ms 2"
    "duplicate-20%|--duplicate 0.2"
    "jitter-2ms|--jitter-ms 2"
    "all-four|--loss 0.01 --reorder 0.25 --reorder-delay-ms 2 --duplicate 0.2 --jitter-ms 2"
)

for impl in "${ACTIVE[@]}"; do
    say "=== $impl"
    mkfifo "$WORK/relay.in"
    : >"$WORK/relay.out"
    ip netns exec "$NSA" "$FAULTKIT" relay "$OUTER_A:$RELAY_PORT" "$OUTER_B:$PORT" --seed 7 \
        <"$WORK/relay.in" >"$WORK/relay.out" 2>>"$WORK/logs/faultkit.log" &
    RELAY_PID=$!
    exec 7>"$WORK/relay.in"
    A_ENDPOINT=$OUTER_A:$RELAY_PORT
    start_side "$impl" A
    start_side "$impl" B
    wait_ping "$NSA" "$TUN_B" 20 || die "$impl: no ping through the tunnel"
    for p in "${PROFILES[@]}"; do
        name=${p%%|*}
        relay_cmd set ${p#*|}
        flow "$impl" "$name"
        tcp "$impl" "$name"
        relay_cmd set
    done
    flood "$impl"
    if [[ $LONG == 1 ]]; then
        flow "$impl" "rekey-${REKEY_SECONDS}s" $((REKEY_SECONDS * 1000)) 1000
        soak "$impl"
    fi
    # Restarts: A talks to B directly from here on (the relay's address is no endpoint B knows).
    A_ENDPOINT=$OUTER_B:$PORT
    ip netns exec "$NSA" wg set "$IFA" peer "$PUB_B" endpoint "$A_ENDPOINT"
    wait_ping "$NSA" "$TUN_B" 10 || die "$impl: no ping after the endpoint change"
    recovery "$impl" B
    recovery "$impl" A
    exec 7>&-
    stop_pid "$RELAY_PID"
    RELAY_PID=""
    rm -f "$WORK/relay.in"
    stop_pid "$DAEMON_A"
    stop_pid "$DAEMON_B"
    DAEMON_A=""
    DAEMON_B=""
done

python3 "$HERE/summarize.py" "$RESULTS" "${ACTIVE[@]}" >"$OUT"
say "results in $OUT"
cat "$OUT"
