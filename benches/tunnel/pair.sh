#!/usr/bin/env bash
# A tunnel between two namespaces, left up while a command runs: for profiling one
# implementation (perf, strace) with the same setup as run.sh, then everything is removed.
#
# Usage (as root):  bash benches/tunnel/pair.sh IMPL COMMAND...
#   IMPL: tandem | boringtun (TANDEM=<repo>/target/release/tandem, boringtun-cli on PATH)
#   COMMAND runs in the host namespace with NSA, NSB (namespaces), PID_A, PID_B (daemons),
#   TUN_A, TUN_B (tunnel addresses) exported; e.g.
#     bash benches/tunnel/pair.sh tandem bash -c \
#       'strace -c -f -p $PID_B -o /tmp/s & sleep 1; ip netns exec $NSA ping -c 200 -i 0.05 $TUN_B; kill -INT %1; wait'
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TANDEM=${TANDEM:-$ROOT/target/release/tandem}
PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
IMPL=${1:?usage: pair.sh IMPL COMMAND...}
shift

# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

export NSA="tpA-$$" NSB="tpB-$$" TUN_A=10.77.0.1 TUN_B=10.77.0.2
OUTER_A=10.78.0.1
OUTER_B=10.78.0.2
IFA="tpwa$$"
IFB="tpwb$$"
export PID_A="" PID_B=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$PID_A"
    stop_pid "$PID_B"
    remove_netns "$NSA" "$NSB"
    rm -f "/var/run/wireguard/$IFA.sock" "/var/run/wireguard/$IFB.sock"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

case $IMPL in
tandem) CMD=("$TANDEM" -f) ;;
boringtun) CMD=("$(command -v boringtun-cli)" --foreground --disable-drop-privileges) ;;
*) echo "unknown implementation $IMPL" >&2; exit 2 ;;
esac

ip netns add "$NSA"
ip netns add "$NSB"
ip -n "$NSA" link add vpa type veth peer name vpb netns "$NSB"
ip -n "$NSA" addr add "$OUTER_A/24" dev vpa
ip -n "$NSB" addr add "$OUTER_B/24" dev vpb
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
ip -n "$NSA" link set vpa up
ip -n "$NSB" link set vpb up
mkdir -p /var/run/wireguard

privA=$(wg genkey)
privB=$(wg genkey)
pubA=$(wg pubkey <<<"$privA")
pubB=$(wg pubkey <<<"$privB")

# side NS IFACE PRIV PEERPUB PEEROUTER TUNADDR PEERTUN: starts one daemon (its PID in LAST).
side() {
    local ns=$1 ifname=$2 i
    ip netns exec "$ns" "${CMD[@]}" "$ifname" >"/tmp/pair-$ifname.log" 2>&1 &
    LAST=$!
    for ((i = 0; i < 150; i++)); do
        [[ -S /var/run/wireguard/$ifname.sock ]] && break
        sleep 0.1
    done
    printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n[Peer]\nPublicKey = %s\nEndpoint = %s:51820\nAllowedIPs = %s/32\n' \
        "$3" "$4" "$5" "$7" >"/tmp/pair-$ifname.conf"
    ip netns exec "$ns" wg setconf "$ifname" "/tmp/pair-$ifname.conf"
    ip -n "$ns" addr add "$6/24" dev "$ifname"
    ip -n "$ns" link set "$ifname" mtu 1420 up
}
side "$NSA" "$IFA" "$privA" "$pubB" "$OUTER_B" "$TUN_A" "$TUN_B"
PID_A=$LAST
side "$NSB" "$IFB" "$privB" "$pubA" "$OUTER_A" "$TUN_B" "$TUN_A"
PID_B=$LAST
for ((i = 0; i < 20; i++)); do
    timeout 3 ip netns exec "$NSA" ping -n -q -c1 -W1 "$TUN_B" >/dev/null 2>&1 && break
done
"$@"
