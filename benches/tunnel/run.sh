#!/usr/bin/env bash
# Tunnel benchmark: tandem side by side with wireguard-go, boringtun-cli and gotatun-cli, plus
# a raw-veth baseline, in one run. Two network namespaces joined by a veth pair; each
# implementation runs one daemon per namespace, is configured with `wg setconf` over its UAPI
# socket, and carries iperf3 TCP (1 and 4 streams) and ping through a 1420-byte-MTU tunnel.
# Runs are interleaved (run 1 of every implementation, then run 2, ...) so that slow drifts of
# a shared machine hit every implementation alike.
#
# Usage (as root):  bash benches/tunnel/run.sh
# Environment:
#   DURATION=10   seconds per iperf3 test          RUNS=3   runs per implementation
#   TANDEM=<repo>/target/release/tandem            IMPLS="veth wireguard-go boringtun gotatun tandem"
#   INSTALL=1     install missing peers (apt-get / cargo install --locked); 0 = skip them
#   OUT=benches/tunnel/results-latest.md           KEEP_WORK=0 (1 keeps logs and raw data)
#
# Nothing outside the two namespaces it creates is configured: the veth pair is created
# directly inside them; the only shared paths are /run/netns and /var/run/wireguard (the UAPI
# sockets, which is why the two sides use different interface names).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
TANDEM=${TANDEM:-$ROOT/target/release/tandem}
IMPLS=${IMPLS:-veth wireguard-go boringtun gotatun tandem}
INSTALL=${INSTALL:-1}
OUT=${OUT:-$HERE/results-latest.md}
KEEP_WORK=${KEEP_WORK:-0}
PING_COUNT=${PING_COUNT:-100}

say() { printf '[tunnelbench] %s\n' "$*" >&2; }
die() { printf '[tunnelbench] error: %s\n' "$*" >&2; exit 1; }

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds), got '$DURATION'"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $PING_COUNT =~ ^[1-9][0-9]*$ ]] || die "PING_COUNT must be a positive integer, got '$PING_COUNT'"
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, veth, TUN devices): sudo -E bash $0"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (load the tun module)"

# cargo-installed peers live here even when the caller's PATH (e.g. under sudo) lacks it.
PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

# Names unique to this run, so parallel runs and other tests never collide.
NSA="tbA-$$"
NSB="tbB-$$"
VETHA="tbva$$"
VETHB="tbvb$$"
IFA="tbwa$$" # tunnel interface in NSA (distinct from IFB: UAPI sockets share one directory)
IFB="tbwb$$"
OUTER_A=10.78.0.1
OUTER_B=10.78.0.2
TUN_A=10.77.0.1
TUN_B=10.77.0.2
PORT=51820
MTU=1420
UAPI_DIR=/var/run/wireguard

WORK=""
DAEMON_A=""
DAEMON_B=""
SERVER_PID=""

# --- process helpers (everything is killed by PID, every wait is bounded) ------------------

# Whether PID is still running (a zombie child counts as gone).
alive() {
    local pid=$1 state
    [[ -n $pid ]] || return 1
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# stop_pid PID [GRACE_SECONDS]: wait up to GRACE for PID to exit on its own, then SIGTERM,
# then SIGKILL after 5 s; reaps it.
stop_pid() {
    local pid=$1 grace=${2:-0} i
    [[ -n $pid ]] || return 0
    for ((i = 0; i < grace * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? ns pid
    trap - EXIT INT TERM
    stop_pid "$SERVER_PID"
    stop_pid "$DAEMON_A"
    stop_pid "$DAEMON_B"
    # Anything else still inside our namespaces was started by this script.
    for ns in "$NSA" "$NSB"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -f "$UAPI_DIR/$IFA.sock" "$UAPI_DIR/$IFB.sock"
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_WORK == 1 || $rc -ne 0 ]]; then
            say "logs and raw data kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/tunnelbench.XXXXXX)
mkdir -p "$WORK/logs"
RESULTS="$WORK/results.tsv" # impl, run, metric, value
NOTES="$WORK/notes.md"      # skipped implementations and failed runs
: >"$RESULTS"
: >"$NOTES"
note() { say "$*"; printf -- '- %s\n' "$*" >>"$NOTES"; }

# --- tools and peers -------------------------------------------------------------------------

apt_install() {
    [[ $INSTALL == 1 ]] || return 1
    command -v apt-get >/dev/null || return 1
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends "$@" \
        >"$WORK/logs/apt.log" 2>&1 ||
        { timeout 300 apt-get update >>"$WORK/logs/apt.log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y \
                --no-install-recommends "$@" >>"$WORK/logs/apt.log" 2>&1; }
}

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nstat >/dev/null || need+=(iproute2)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
if ((${#need[@]})); then apt_install "${need[@]}" || true; fi
for tool in ip nstat wg iperf3 ping python3 timeout ss; do
    command -v "$tool" >/dev/null || die "$tool is required and missing (apt-get install -y --no-install-recommends wireguard-tools iperf3 iproute2 iputils-ping python3)"
done

cargo_install() { # crate
    [[ $INSTALL == 1 ]] || return 1
    command -v cargo >/dev/null || return 1
    say "cargo install $1 --locked (log: $WORK/logs/cargo-$1.log)"
    timeout 3600 cargo install "$1" --locked >"$WORK/logs/cargo-$1.log" 2>&1
}

declare -A BIN=() LABEL=() VERSION=()
TANDEM_MODE=""
ACTIVE=()
for impl in $IMPLS; do
    case $impl in
    veth)
        LABEL[veth]="veth, no tunnel"
        ACTIVE+=(veth)
        ;;
    wireguard-go)
        command -v wireguard-go >/dev/null || apt_install wireguard-go || true
        if command -v wireguard-go >/dev/null; then
            BIN[$impl]=$(command -v wireguard-go)
            VERSION[$impl]=$(timeout 5 wireguard-go --version 2>&1 | head -n1 || true)
            LABEL[$impl]="wireguard-go"
            ACTIVE+=("$impl")
        else
            note "wireguard-go: skipped (not installed; apt-get install -y --no-install-recommends wireguard-go)"
        fi
        ;;
    boringtun)
        command -v boringtun-cli >/dev/null || cargo_install boringtun-cli || true
        if command -v boringtun-cli >/dev/null; then
            BIN[$impl]=$(command -v boringtun-cli)
            VERSION[$impl]=$(timeout 5 boringtun-cli --version 2>&1 | head -n1 || true)
            LABEL[$impl]="boringtun-cli"
            ACTIVE+=("$impl")
        else
            note "boringtun: skipped (boringtun-cli not installed; cargo install boringtun-cli --locked)"
        fi
        ;;
    gotatun)
        # The gotatun-cli crate installs a binary called `gotatun`.
        command -v gotatun >/dev/null || cargo_install gotatun-cli || true
        if command -v gotatun >/dev/null; then
            BIN[$impl]=$(command -v gotatun)
            VERSION[$impl]=$(timeout 5 gotatun --version 2>&1 | head -n1 || true)
            LABEL[$impl]="gotatun-cli"
            ACTIVE+=("$impl")
        else
            note "gotatun: skipped (gotatun not installed; cargo install gotatun-cli --locked)"
        fi
        ;;
    tandem)
        if [[ ! -x $TANDEM ]]; then
            note "tandem: skipped ($TANDEM missing; build it with cargo build --release, or set TANDEM=)"
            continue
        fi
        help=$(timeout 10 "$TANDEM" --help 2>&1 || true)
        if grep -qE -- '(^|[^[:alnum:]-])(-f|--foreground)([^[:alnum:]-]|$)' <<<"$help"; then
            TANDEM_MODE=foreground
        elif grep -qE '^[[:space:]]+up([[:space:]]|$)' <<<"$help"; then
            TANDEM_MODE=up
        else
            note "tandem: skipped ($TANDEM --help shows neither -f/--foreground nor an 'up' command)"
            continue
        fi
        BIN[$impl]=$TANDEM
        VERSION[$impl]="$(timeout 5 "$TANDEM" --version 2>&1 | head -n1 || true) ($TANDEM_MODE mode)"
        if [[ $TANDEM_MODE == foreground ]]; then
            LABEL[$impl]="tandem"
        else
            LABEL[$impl]="tandem (up CONFIG.toml)"
        fi
        ACTIVE+=("$impl")
        ;;
    *) die "unknown implementation '$impl' in IMPLS (known: veth wireguard-go boringtun gotatun tandem)" ;;
    esac
done
((${#ACTIVE[@]})) || die "nothing to run"

# --- namespaces ------------------------------------------------------------------------------

say "namespaces $NSA / $NSB, veth $VETHA / $VETHB"
ip netns add "$NSA"
ip netns add "$NSB"
# Created inside NSA with its peer inside NSB: the pair never appears in the host namespace.
ip -n "$NSA" link add "$VETHA" type veth peer name "$VETHB" netns "$NSB"
ip -n "$NSA" addr add "$OUTER_A/24" dev "$VETHA"
ip -n "$NSB" addr add "$OUTER_B/24" dev "$VETHB"
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
ip -n "$NSA" link set "$VETHA" up
ip -n "$NSB" link set "$VETHB" up
mkdir -p "$UAPI_DIR"

ok=0
for ((i = 0; i < 50; i++)); do
    if ip netns exec "$NSA" ping -n -q -c1 -W1 "$OUTER_B" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
done
((ok)) || die "veth $OUTER_A -> $OUTER_B does not answer ping"

# --- measurement helpers ---------------------------------------------------------------------

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# cpu_ticks PID: utime+stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'
}
CLK_TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }

# udp_errors NS: "RCVBUF SNDBUF" absolute counters of the namespace (nstat without history).
udp_errors() {
    ip netns exec "$1" env NSTAT_HISTORY="$WORK/nstat.hist" \
        nstat -a -s -z UdpRcvbufErrors UdpSndbufErrors 2>/dev/null |
        awk '$1 == "UdpRcvbufErrors" { r = $2 } $1 == "UdpSndbufErrors" { s = $2 }
             END { print r + 0, s + 0 }'
}

# tun_drops NS IFACE: "RX_DROPPED TX_DROPPED" of the interface.
tun_drops() {
    ip -n "$1" -s -j link show "$2" 2>/dev/null | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)[0]["stats64"]
    print(s["rx"]["dropped"], s["tx"]["dropped"])
except Exception:
    print("0 0")'
}

# ping_median DEST: median RTT in ms of PING_COUNT idle pings from NSA, or nothing.
ping_median() {
    timeout $((PING_COUNT + 15)) ip netns exec "$NSA" \
        ping -n -c "$PING_COUNT" -i 0.05 -W 1 "$1" 2>/dev/null | python3 -c '
import re, statistics, sys
t = [float(m) for m in re.findall(r"time=([0-9.]+)", sys.stdin.read())]
if t:
    print(f"{statistics.median(t):.3f}")'
}

# iperf_mbps DEST STREAMS TAG: one iperf3 TCP test NSA -> NSB; sets MBPS to the receiver's
# Mbit/s (not printed: the server must stay a child of this shell for cleanup).
MBPS=""
iperf_mbps() {
    local dest=$1 streams=$2 tag=$3 json="$WORK/logs/iperf-$3.json" i mbps
    MBPS=""
    ip netns exec "$NSB" iperf3 -s -1 >"$WORK/logs/iperf-server-$tag.log" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 50; i++)); do
        ip netns exec "$NSB" ss -Hltn 'sport = :5201' 2>/dev/null | grep -q . && break
        sleep 0.1
    done
    timeout $((DURATION + 30)) ip netns exec "$NSA" \
        iperf3 -c "$dest" -t "$DURATION" -P "$streams" -J --connect-timeout 5000 \
        >"$json" 2>&1 || true
    stop_pid "$SERVER_PID" 5
    SERVER_PID=""
    mbps=$(python3 - "$json" <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as f:
        r = json.load(f)
    print(f'{r["end"]["sum_received"]["bits_per_second"] / 1e6:.1f}')
except Exception:
    pass
EOF
)
    [[ -n $mbps ]] || { say "iperf3 $tag failed: $(head -c 300 "$json" | tr '\n' ' ')"; return 1; }
    MBPS=$mbps
}

# --- implementations -------------------------------------------------------------------------

# wait_ready NS IFACE SOCKET PID: the interface exists (and the UAPI socket, when SOCKET is not
# empty), bounded to 15 s; fails early when the daemon PID died.
wait_ready() {
    local ns=$1 ifname=$2 sock=$3 pid=$4 i
    for ((i = 0; i < 150; i++)); do
        alive "$pid" || return 1
        if ip -n "$ns" link show "$ifname" >/dev/null 2>&1 && [[ -z $sock || -S $sock ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# start_side IMPL RUN NS IFACE PRIVATE_KEY PEER_PUBLIC_KEY PEER_OUTER TUNNEL_ADDR: starts and
# configures one daemon; sets LAST_PID to its PID even when configuring it fails.
LAST_PID=""
start_side() {
    local impl=$1 run=$2 ns=$3 ifname=$4 priv=$5 peerpub=$6 peerouter=$7 tunaddr=$8
    local peertun log conf sock=""
    peertun=$([[ $tunaddr == "$TUN_A" ]] && echo "$TUN_B" || echo "$TUN_A")
    log="$WORK/logs/$impl-$ifname-run$run.log"
    LAST_PID=""
    rm -f "$UAPI_DIR/$ifname.sock"
    case $impl in
    wireguard-go)
        ip netns exec "$ns" "${BIN[$impl]}" -f "$ifname" >"$log" 2>&1 &
        ;;
    boringtun)
        ip netns exec "$ns" "${BIN[$impl]}" --foreground --disable-drop-privileges \
            "$ifname" >"$log" 2>&1 &
        ;;
    gotatun)
        ip netns exec "$ns" "${BIN[$impl]}" --foreground --disable-drop-privileges \
            --verbosity error "$ifname" >"$log" 2>&1 &
        ;;
    tandem)
        if [[ $TANDEM_MODE == foreground ]]; then
            ip netns exec "$ns" "${BIN[$impl]}" -f "$ifname" >"$log" 2>&1 &
        else
            conf="$WORK/$impl-$ifname-run$run.toml"
            cat >"$conf" <<EOF
[interface]
name = "$ifname"
private_key = "$priv"
listen_port = $PORT
address = ["$tunaddr/24"]
mtu = $MTU
table = "off"

[[peer]]
public_key = "$peerpub"
endpoint = "$peerouter:$PORT"
allowed_ips = ["$peertun/32"]
EOF
            ip netns exec "$ns" "${BIN[$impl]}" up "$conf" >"$log" 2>&1 &
        fi
        ;;
    esac
    LAST_PID=$!
    if [[ $impl != tandem || $TANDEM_MODE == foreground ]]; then sock="$UAPI_DIR/$ifname.sock"; fi
    if ! wait_ready "$ns" "$ifname" "$sock" "$LAST_PID"; then
        say "$impl: $ifname in $ns did not come up within 15 s; log tail:"
        tail -n 20 "$log" >&2 || true
        return 1
    fi
    if [[ -n $sock ]]; then
        conf="$WORK/$impl-$ifname-run$run.conf"
        cat >"$conf" <<EOF
[Interface]
PrivateKey = $priv
ListenPort = $PORT

[Peer]
PublicKey = $peerpub
Endpoint = $peerouter:$PORT
AllowedIPs = $peertun/32
EOF
        timeout 10 ip netns exec "$ns" wg setconf "$ifname" "$conf" >>"$log" 2>&1 ||
            { say "$impl: wg setconf $ifname failed; log tail:"; tail -n 20 "$log" >&2; return 1; }
    fi
    ip -n "$ns" addr replace "$tunaddr/24" dev "$ifname" &&
        ip -n "$ns" link set "$ifname" mtu "$MTU" up ||
        { say "$impl: cannot configure $ifname in $ns"; return 1; }
}

stop_impl() {
    local ns ifname i
    stop_pid "$DAEMON_A"
    stop_pid "$DAEMON_B"
    DAEMON_A=""
    DAEMON_B=""
    for pair in "$NSA:$IFA" "$NSB:$IFB"; do
        ns=${pair%%:*}
        ifname=${pair#*:}
        for ((i = 0; i < 50; i++)); do
            ip -n "$ns" link show "$ifname" >/dev/null 2>&1 || break
            sleep 0.1
        done
        ip -n "$ns" link del "$ifname" >/dev/null 2>&1 || true
        rm -f "$UAPI_DIR/$ifname.sock"
    done
}

# measure IMPL RUN DEST: ping, 1-stream (with daemon CPU), 4-stream; counters around all three.
measure() {
    local impl=$1 run=$2 dest=$3 rtt tcp1 tcp4 t0 t1 a0 a1 b0 b1
    local ua0 ub0 ua1 ub1 da0 db0 da1 db1 tunnel=0
    [[ $impl != veth ]] && tunnel=1
    if ((tunnel)); then
        read -r ua0 < <(udp_errors "$NSA" | tr ' ' ':')
        read -r ub0 < <(udp_errors "$NSB" | tr ' ' ':')
        read -r da0 < <(tun_drops "$NSA" "$IFA" | tr ' ' ':')
        read -r db0 < <(tun_drops "$NSB" "$IFB" | tr ' ' ':')
    fi

    rtt=$(ping_median "$dest")
    [[ -n $rtt ]] && record "$impl" "$run" rtt "$rtt"

    if ((tunnel)); then a0=$(cpu_ticks "$DAEMON_A"); b0=$(cpu_ticks "$DAEMON_B"); fi
    t0=$(now)
    iperf_mbps "$dest" 1 "$impl-run$run-P1" || true
    tcp1=$MBPS
    t1=$(now)
    if ((tunnel)); then a1=$(cpu_ticks "$DAEMON_A"); b1=$(cpu_ticks "$DAEMON_B"); fi
    [[ -n $tcp1 ]] || return 1
    record "$impl" "$run" tcp1 "$tcp1"
    if ((tunnel)) && [[ -n $a0 && -n $a1 && -n $b0 && -n $b1 ]]; then
        record "$impl" "$run" cpu_a "$(python3 -c "print(f'{($a1-$a0)/$CLK_TCK/($t1-$t0)*100:.0f}')")"
        record "$impl" "$run" cpu_b "$(python3 -c "print(f'{($b1-$b0)/$CLK_TCK/($t1-$t0)*100:.0f}')")"
    fi

    iperf_mbps "$dest" 4 "$impl-run$run-P4" || return 1
    tcp4=$MBPS
    record "$impl" "$run" tcp4 "$tcp4"

    if ((tunnel)); then
        read -r ua1 < <(udp_errors "$NSA" | tr ' ' ':')
        read -r ub1 < <(udp_errors "$NSB" | tr ' ' ':')
        read -r da1 < <(tun_drops "$NSA" "$IFA" | tr ' ' ':')
        read -r db1 < <(tun_drops "$NSB" "$IFB" | tr ' ' ':')
        record "$impl" "$run" udp_rcvbuf $(((${ua1%:*} - ${ua0%:*}) + (${ub1%:*} - ${ub0%:*})))
        record "$impl" "$run" udp_sndbuf $(((${ua1#*:} - ${ua0#*:}) + (${ub1#*:} - ${ub0#*:})))
        record "$impl" "$run" tun_rx_drop $(((${da1%:*} - ${da0%:*}) + (${db1%:*} - ${db0%:*})))
        record "$impl" "$run" tun_tx_drop $(((${da1#*:} - ${da0#*:}) + (${db1#*:} - ${db0#*:})))
    fi
}

# run_impl IMPL RUN: fresh keys and daemons, wait for the tunnel, measure, stop.
run_impl() {
    local impl=$1 run=$2 privA privB pubA pubB i ok=0 rc=0
    if [[ $impl == veth ]]; then
        measure veth "$run" "$OUTER_B"
        return
    fi
    privA=$(wg genkey) && privB=$(wg genkey) || return 1
    pubA=$(wg pubkey <<<"$privA") && pubB=$(wg pubkey <<<"$privB") || return 1
    start_side "$impl" "$run" "$NSA" "$IFA" "$privA" "$pubB" "$OUTER_B" "$TUN_A" || rc=1
    DAEMON_A=$LAST_PID
    ((rc == 0)) || return 1
    start_side "$impl" "$run" "$NSB" "$IFB" "$privB" "$pubA" "$OUTER_A" "$TUN_B" || rc=1
    DAEMON_B=$LAST_PID
    ((rc == 0)) || return 1
    # The first ping triggers the handshake; allow a few retransmissions.
    for ((i = 0; i < 20; i++)); do
        if timeout 3 ip netns exec "$NSA" ping -n -q -c1 -W1 "$TUN_B" >/dev/null 2>&1; then
            ok=1
            break
        fi
    done
    if ((!ok)); then
        say "$impl: no ping through the tunnel within 20 tries"
        return 1
    fi
    measure "$impl" "$run" "$TUN_B"
}

# --- main loop -------------------------------------------------------------------------------

say "implementations: ${ACTIVE[*]}; RUNS=$RUNS DURATION=${DURATION}s"
for ((run = 1; run <= RUNS; run++)); do
    # The order rotates each run, so that no implementation always follows the same one
    # (what ran just before, e.g. a 10 s iperf3, shifts the next idle RTT by 10-15%).
    n=${#ACTIVE[@]}
    order=()
    for ((k = 0; k < n; k++)); do order+=("${ACTIVE[$(((k + run - 1) % n))]}"); done
    for impl in "${order[@]}"; do
        say "run $run/$RUNS: $impl"
        if run_impl "$impl" "$run"; then
            record "$impl" "$run" ok 1
        else
            note "${LABEL[$impl]}: run $run failed (see the messages above)"
        fi
        [[ $impl == veth ]] || stop_impl
    done
done

# --- report ----------------------------------------------------------------------------------

{
    echo "# Tunnel benchmark: latest results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), kernel $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- RUNS=$RUNS (implementation order rotated each run), DURATION=${DURATION}s per iperf3 test, tunnel MTU $MTU, ping: $PING_COUNT pings 50 ms apart"
    for impl in "${ACTIVE[@]}"; do
        [[ $impl == veth ]] && continue
        echo "- ${LABEL[$impl]}: ${BIN[$impl]} (${VERSION[$impl]:-version unknown})"
    done
    echo
    args=()
    for impl in "${ACTIVE[@]}"; do args+=("$impl=${LABEL[$impl]}"); done
    python3 "$HERE/summarize.py" "$RESULTS" "$RUNS" "${args[@]}"
    if [[ -s $NOTES ]]; then
        echo
        echo "Notes:"
        echo
        cat "$NOTES"
    fi
} >"$WORK/report.md"
cp "$WORK/report.md" "$OUT"
cat "$WORK/report.md"
say "written to $OUT"
