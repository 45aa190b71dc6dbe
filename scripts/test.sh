#!/usr/bin/env bash
# The one command that runs every test: installs what is missing, then format, lint and tests.
# CI (.ci/run) calls exactly this. Needs root for the network-namespace tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

say "cargo test"
cargo test --all-targets
