# Shell helpers shared by the namespace benches (benches/faults/run.sh,
# benches/manypeers/run.sh): sourced, not run. Every process is stopped by PID, every wait is
# bounded.

# alive PID: whether PID is still running (a zombie child counts as gone).
alive() {
    local state
    [[ -n $1 ]] || return 1
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# stop_pid PID [SIGNAL]: SIGNAL (default TERM), wait up to 5 s, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 sig=${2:-TERM} i
    [[ -n $pid ]] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# remove_netns NS...: kills what still runs inside each namespace (only this bench started
# anything there), then deletes it.
remove_netns() {
    local ns pid
    for ns in "$@"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
