#!/usr/bin/env bash
# Usage: scripts/test.sh
# Runs every check and test: installs what the tests need (shellcheck, the
# python `datadog` client, ...), then rustfmt, clippy, shellcheck and
# the tests (unit, property, integration, buildpack and CNB boot tests)
# with cargo-nextest where it is installed, else `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh

echo "-----> cargo fmt --check"
cargo fmt --all -- --check
echo "-----> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "-----> shellcheck"
shellcheck bin/* lib/*.sh profile.d/*.sh scripts/*.sh .ci/run
# cargo-nextest runs every test binary's tests side by side (four at a time,
# .config/nextest.toml), so the suite takes about as long as its slowest
# tests rather than the sum of each binary's; without it, plain cargo test
# runs the same tests one binary after another.
if cargo nextest --version >/dev/null 2>&1; then
	echo "-----> cargo nextest run"
	cargo nextest run --workspace
	echo "-----> cargo test --doc"
	cargo test --workspace --doc
else
	echo "-----> cargo test (cargo-nextest is not installed: slower, same tests)"
	cargo test --workspace
fi
