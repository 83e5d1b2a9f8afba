#!/usr/bin/env bash
# Formatting and clippy with warnings denied, for the workspace and the fuzz crate.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
(cd fuzz && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets --locked -- -D warnings
