#!/usr/bin/env bash
# Runs every test of the workspace, after installing and starting what the tests need
# (RabbitMQ, the tansu Kafka broker). This is the test command README.md names and
# .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi

eval "$(./scripts/services.sh up)"
trap './scripts/services.sh down' EXIT

cargo nextest run --workspace --all-features --no-fail-fast
# nextest does not run doctests.
cargo test --workspace --all-features --doc
