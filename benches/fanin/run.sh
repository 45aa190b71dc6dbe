#!/usr/bin/env bash
# Fan-in bench: one tandem server with 4 tandem peers, each in its own namespace, all sending
# TCP to the server at once; against one peer sending alone, in the same run.
#
# Namespaces: S (the server) and C1..C4 (one client each), a veth pair from S to each client
# (outer 10.88.I.1 in S, 10.88.I.2 in CI), tunnel 10.89.0.1 (server) and 10.89.0.(10+I)
# (client I), MTU 1420. Every daemon is `tandem -f IFACE` configured by `wg setconf`.
#
# Per run (RUNS times): one stream from C1 alone for DURATION seconds ("1 peer"), then one
# stream from each of C1..C4 at once to four iperf3 servers in S ("4 peers"; the sum of what
# the servers received); around each, the CPU of the server daemon and of all five daemons.
# The two tests alternate order from run to run. Medians (min-max) over the runs.
#
# Usage (as root):  bash benches/fanin/run.sh
# Environment:  RUNS=3  DURATION=5  PEERS=4  TANDEM=<repo>/target/release/tandem
#               OUT=benches/fanin/results-latest.md  KEEP_WORK=0
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
PEERS=${PEERS:-4}
TANDEM=${TANDEM:-$ROOT/target/release/tandem}
OUT=${OUT:-$HERE/results-latest.md}
KEEP_WORK=${KEEP_WORK:-0}

say() { printf '[fanin] %s\n' "$*" >&2; }
die() { printf '[fanin] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN devices)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds)"
[[ $PEERS =~ ^[1-9]$ ]] || die "PEERS must be 1..9"
for tool in ip wg iperf3 ping python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
[[ -x $TANDEM ]] || die "$TANDEM missing: cargo build --release --bin tandem"

# alive, stop_pid, remove_netns
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

NSS="fiS-$$"
IFS_="fis$$"
UAPI_DIR=/var/run/wireguard
WORK=$(mktemp -d /tmp/fanin.XXXXXX)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
DAEMONS=()
SERVERS=()
declare -a NSC IFC

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${SERVERS[@]}" "${DAEMONS[@]}"; do stop_pid "$pid"; done
    remove_netns "$NSS" "${NSC[@]}"
    rm -f "$UAPI_DIR/$IFS_.sock"
    for ((i = 1; i <= PEERS; i++)); do rm -f "$UAPI_DIR/${IFC[$i]}.sock"; done
    if [[ $KEEP_WORK == 1 || $rc -ne 0 ]]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }
CLK_TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }

# start_daemon NS IFACE CONF: tandem -f IFACE in NS, configured with CONF; PID in LAST.
LAST=""
start_daemon() {
    local ns=$1 ifname=$2 conf=$3 i
    rm -f "$UAPI_DIR/$ifname.sock"
    ip netns exec "$ns" "$TANDEM" -f "$ifname" >"$WORK/$ifname.log" 2>&1 &
    LAST=$!
    DAEMONS+=("$LAST")
    for ((i = 0; i < 150; i++)); do
        [[ -S $UAPI_DIR/$ifname.sock ]] && break
        alive "$LAST" || die "tandem in $ns exited: $(tail -n 5 "$WORK/$ifname.log")"
        sleep 0.1
    done
    [[ -S $UAPI_DIR/$ifname.sock ]] || die "tandem in $ns: no UAPI socket within 15 s"
    timeout 10 ip netns exec "$ns" wg setconf "$ifname" "$conf"
}

mkdir -p "$UAPI_DIR"
ip netns add "$NSS"
ip -n "$NSS" link set lo up
SERVER_KEY=$(wg genkey)
SERVER_PUB=$(wg pubkey <<<"$SERVER_KEY")
printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n' "$SERVER_KEY" >"$WORK/server.conf"
for ((i = 1; i <= PEERS; i++)); do
    NSC[i]="fiC$i-$$"
    IFC[i]="fic$i$$"
    ip netns add "${NSC[$i]}"
    ip -n "${NSC[$i]}" link set lo up
    # Created in S with its peer in CI: nothing appears in the host namespace.
    ip -n "$NSS" link add "vs$i" type veth peer name vc netns "${NSC[$i]}"
    ip -n "$NSS" addr add "10.88.$i.1/24" dev "vs$i"
    ip -n "${NSC[$i]}" addr add "10.88.$i.2/24" dev vc
    ip -n "$NSS" link set "vs$i" up
    ip -n "${NSC[$i]}" link set vc up
    key=$(wg genkey)
    pub=$(wg pubkey <<<"$key")
    printf '\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.89.0.%d/32\n' "$pub" $((10 + i)) >>"$WORK/server.conf"
    printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n[Peer]\nPublicKey = %s\nEndpoint = 10.88.%d.1:51820\nAllowedIPs = 10.89.0.1/32\n' \
        "$key" "$SERVER_PUB" "$i" >"$WORK/client$i.conf"
done

say "starting the server and $PEERS clients"
start_daemon "$NSS" "$IFS_" "$WORK/server.conf"
SERVER=$LAST
ip -n "$NSS" addr add 10.89.0.1/24 dev "$IFS_"
ip -n "$NSS" link set "$IFS_" mtu 1420 up
for ((i = 1; i <= PEERS; i++)); do
    start_daemon "${NSC[$i]}" "${IFC[$i]}" "$WORK/client$i.conf"
    ip -n "${NSC[$i]}" addr add "10.89.0.$((10 + i))/24" dev "${IFC[$i]}"
    ip -n "${NSC[$i]}" link set "${IFC[$i]}" mtu 1420 up
done
for ((i = 1; i <= PEERS; i++)); do
    ok=0
    for ((k = 0; k < 20; k++)); do
        if timeout 3 ip netns exec "${NSC[$i]}" ping -n -q -c1 -W1 10.89.0.1 >/dev/null 2>&1; then
            ok=1
            break
        fi
    done
    ((ok)) || die "client $i: no ping through the tunnel within 20 tries"
done
for ((i = 1; i <= PEERS; i++)); do
    ip netns exec "$NSS" iperf3 -s -p $((5200 + i)) >"$WORK/iperf-server-$i.log" 2>&1 &
    SERVERS+=($!)
done
for ((k = 0; k < 50; k++)); do
    (($(ip netns exec "$NSS" ss -Hltn 'sport >= :5201 and sport <= :5209' | wc -l) >= PEERS)) && break
    sleep 0.1
done

# all_ticks: CPU ticks of the server daemon, then of all daemons.
all_ticks() {
    local s pid total=0
    s=$(cpu_ticks "$SERVER")
    for pid in "${DAEMONS[@]}"; do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$s $total"
}

mbps() {
    python3 -c '
import json, sys
total = 0.0
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            total += json.load(f)["end"]["sum_received"]["bits_per_second"] / 1e6
    except Exception:
        print("failed"); sys.exit()
print(f"{total:.0f}")' "$@"
}

# test TAG N RUN: N clients (C1..CN) each send one stream at once; records Mbit/s and CPU.
test_peers() {
    local tag=$1 n=$2 run=$3 i t0 t1 s0 a0 s1 a1 pids=() files=()
    read -r s0 a0 < <(all_ticks)
    t0=$(now)
    for ((i = 1; i <= n; i++)); do
        files+=("$WORK/$tag-run$run-c$i.json")
        timeout $((DURATION + 30)) ip netns exec "${NSC[$i]}" \
            iperf3 -c 10.89.0.1 -p $((5200 + i)) -t "$DURATION" -J --connect-timeout 5000 \
            >"$WORK/$tag-run$run-c$i.json" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    t1=$(now)
    read -r s1 a1 < <(all_ticks)
    record "$tag" mbps "$(mbps "${files[@]}")"
    record "$tag" cpu_server "$(python3 -c "print(f'{($s1-$s0)/$CLK_TCK/($t1-$t0)*100:.0f}')")"
    record "$tag" cpu_all "$(python3 -c "print(f'{($a1-$a0)/$CLK_TCK/($t1-$t0)*100:.0f}')")"
}

for ((run = 1; run <= RUNS; run++)); do
    if ((run % 2)); then order=(1 "$PEERS"); else order=("$PEERS" 1); fi
    for n in "${order[@]}"; do
        say "run $run/$RUNS: $n peer(s)"
        test_peers "$n" "$n" "$run"
        sleep 1
    done
done

{
    echo "# Fan-in bench: latest results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), kernel $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- tandem: $TANDEM ($(timeout 5 "$TANDEM" --version 2>&1 | head -n1 || true))"
    echo "- RUNS=$RUNS (order alternating), DURATION=${DURATION}s, one TCP stream per peer, MTU 1420"
    echo
    python3 - "$RESULTS" "$PEERS" <<'EOF'
import statistics, sys
from collections import defaultdict
path, peers = sys.argv[1], sys.argv[2]
vals = defaultdict(list)
for line in open(path):
    tag, key, v = line.rstrip("\n").split("\t")
    try:
        vals[(tag, key)].append(float(v))
    except ValueError:
        pass
def cell(tag, key):
    v = vals.get((tag, key))
    if not v:
        return "-"
    m = statistics.median(v)
    lo, hi = min(v), max(v)
    return f"{m:.0f}" if lo == hi else f"{m:.0f} ({lo:.0f}–{hi:.0f})"
def per_core(tag):
    out = []
    for mb, cpu in zip(vals.get((tag, "mbps"), []), vals.get((tag, "cpu_all"), [])):
        if cpu > 0:
            out.append(mb / 1000 / (cpu / 100))
    if not out:
        return "-"
    return f"{statistics.median(out):.2f} ({min(out):.2f}–{max(out):.2f})"
print("| active peers | runs | TCP Mbit/s (sum) | server daemon CPU % | all daemons CPU % | Gbit/s per daemon core |")
print("|---|---:|---:|---:|---:|---:|")
for tag in ["1", peers]:
    n = len(vals.get((tag, "mbps"), []))
    print(f"| {tag} | {n} | {cell(tag, 'mbps')} | {cell(tag, 'cpu_server')} | {cell(tag, 'cpu_all')} | {per_core(tag)} |")
one, many = vals.get(("1", "mbps")), vals.get((peers, "mbps"))
if one and many:
    r = statistics.median(many) / statistics.median(one)
    print()
    print(f"{peers} peers / 1 peer (medians): {r:.2f}x")
EOF
} >"$WORK/report.md"
cp "$WORK/report.md" "$OUT"
cat "$WORK/report.md"
say "written to $OUT"
