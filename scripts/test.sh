#!/usr/bin/env bash
# Usage: scripts/test.sh
# Runs every check and test: installs what the tests need (shellcheck, the
# python `datadog` client, ...), then rustfmt, clippy, shellcheck and
# `cargo test --workspace` (unit, property, integration, buildpack and CNB
# boot tests).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh

echo "-----> cargo fmt --check"
cargo fmt --all -- --check
echo "-----> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "-----> shellcheck"
shellcheck bin/* lib/*.sh profile.d/*.sh scripts/*.sh .ci/run
echo "-----> cargo test"
cargo test --workspace
