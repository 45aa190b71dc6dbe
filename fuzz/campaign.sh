#!/usr/bin/env bash
# The fuzzing campaign of fuzz/README.md: builds the targets without AddressSanitizer (the
# code under test has no `unsafe`), runs each for RUNS executions (10^7 by default) on its
# checked-in corpus, keeps the final statistics in fuzz/results/TARGET.log, and minimises the
# corpus again (cargo fuzz cmin). Every fuzz process runs at the lowest CPU priority
# (SCHED_IDLE), so it yields at once to anything else on the machine.
#
#   bash fuzz/campaign.sh                  # every target
#   RUNS=100000 bash fuzz/campaign.sh datagram transport
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1 # libFuzzer's flags are nightly-only; this allows them on stable
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do cargo fuzz build --sanitizer none "$t"; done
mkdir -p results
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t: $RUNS runs"
    chrt -i 0 nice -n 19 cargo fuzz run --sanitizer none "$t" "corpus/$t" -- \
        -runs="$RUNS" -max_len=4096 -print_final_stats=1 -close_fd_mask=1 \
        >"results/$t.log" 2>&1 || { tail -40 "results/$t.log"; exit 1; }
    grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' \
        "results/$t.log"
    chrt -i 0 cargo fuzz cmin --sanitizer none "$t" "corpus/$t" >/dev/null 2>&1
    echo "   corpus after cmin: $(find "corpus/$t" -type f | wc -l) inputs"
done
