#!/usr/bin/env bash
# The one command that runs every test: installs what is missing, then format, lint and tests.
# CI (.ci/run) calls exactly this. Needs root for the network-namespace tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "system tools the tests need"
# The namespace tests need iproute2 and ping; the unit-file test needs systemd-analyze. Install
# only what is missing (CI runs as root on a fresh machine).
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# Real peers and the wg tools: tests/interop_real.rs (wireguard-go) and tests/uapi_wg.rs (wg,
# wg-quick against tandem's UAPI socket).
command -v wireguard-go >/dev/null 2>&1 || missing+=(wireguard-go)
{ command -v wg && command -v wg-quick; } >/dev/null 2>&1 || missing+=(wireguard-tools)
if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "missing packages: ${missing[*]} (install them, or run as root on Debian/Ubuntu)" >&2
    fi
fi

say "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The other real peer of tests/interop_real.rs: boringtun's command-line daemon.
if ! command -v boringtun-cli >/dev/null 2>&1 && [ ! -x "${HOME:-/root}/.cargo/bin/boringtun-cli" ]; then
    say "cargo install boringtun-cli"
    cargo install boringtun-cli --locked
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

say "cargo test"
cargo test --all-targets
