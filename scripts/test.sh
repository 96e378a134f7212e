#!/usr/bin/env bash
# Runs every test of the workspace, after installing and starting what the tests need
# (RabbitMQ, PostgreSQL, the tansu Kafka broker). This is the test command README.md names and
# .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi

# The store fault tests inject failed fdatasyncs and watch system calls with strace.
if ! command -v strace >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing strace" >&2
    apt-get install -y -q strace >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q strace >/dev/null; }
fi

# tests/tests/compose.rs validates docker-compose.yml with Debian's docker-compose (there is
# no Docker engine on these machines; `config` needs none).
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing docker-compose" >&2
    (apt-get install -y -q docker-compose >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null; }) \
        || echo "docker-compose could not be installed" >&2
fi
# tests/tests/slo.rs checks and unit-tests the generated alerting rules with promtool, and
# runs a Prometheus server against the app (Debian's `prometheus` package has both).
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing prometheus" >&2
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }) \
        || echo "prometheus could not be installed" >&2
fi
if command -v apt-get >/dev/null 2>&1; then
    export EXACTLY_REQUIRE_COMPOSE=1 EXACTLY_REQUIRE_PROMETHEUS=1
fi

# A service that cannot be started stops the run here, loudly (an `eval "$(...)"` alone
# would carry on without it).
if ! services=$(./scripts/services.sh up); then
    echo "test.sh: RabbitMQ, PostgreSQL or tansu could not be started (see above); not running the tests" >&2
    exit 1
fi
eval "$services"
trap './scripts/services.sh down' EXIT

cargo nextest run --workspace --all-features --no-fail-fast
# nextest does not run doctests.
cargo test --workspace --all-features --doc
# Loom model checks of the claim/lease protocol and the group-commit threads: a build of
# exactly-core with loom's locks and threads (its own target dir; about two minutes).
RUSTFLAGS="--cfg exactly_loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p exactly-core --no-default-features --release --test loom
