#!/usr/bin/env bash
# How long a Kafka consumer (the app runner with the ledger handler) takes to handle new
# records after a SIGKILL and a restart, with and without static group membership, on
# tansu. Prints two lines per mode; figures in docs/OPERATIONS.md ("Restarts on Kafka").
#   eval "$(scripts/services.sh up)"; cargo build -p exactly-tests -p exactly-cli; scripts/kafka-restart.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
broker=${EXACTLY_KAFKA_BROKER:?run eval "\$(scripts/services.sh up)" first}
app=$root/target/debug/app_child
cli=$root/target/debug/exactly
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

records() { # JSON lines of ledger credits k$1..k$2
    python3 -c "import json,sys; [print(json.dumps({'payload': json.dumps({'id': f'k{i}', 'account': i % 10, 'cents': 1}), 'key': f'k{i}'})) for i in range(int(sys.argv[1]), int(sys.argv[2]))]" "$1" "$2"
}
since() { python3 -c "import sys,time; print(round(time.time() - float(sys.argv[1]), 1))" "$1"; }
handled() { sort -u "$1/effects.log" 2>/dev/null | wc -l; }

run() { # mode, extra TOML line
    local mode=$1 extra=$2 dir=$work/$1 topic=restart-$1-$$
    mkdir -p "$dir"
    "$root/.tools/bin/tansu" topic create --broker "tcp://$broker" --partitions 2 "$topic" >/dev/null
    cat >"$dir/app.toml" <<TOML
[store]
path = "$dir/store"
[http]
disabled = true
[kafka.ledger]
brokers = "$broker"
group = "g-$topic"
topics = ["$topic"]
$extra
librdkafka = { "session.timeout.ms" = "30000", "heartbeat.interval.ms" = "1000" }
TOML
    local start pid
    EXACTLY_CONFIG=$dir/app.toml EFFECTS=$dir/effects.log RUST_LOG=error "$app" & pid=$!
    start=$(date +%s.%N)
    records 0 20 >"$dir/a.jsonl"; "$cli" produce --file "$dir/a.jsonl" kafka --brokers "$broker" --topic "$topic" >/dev/null
    until [ "$(handled "$dir")" -ge 20 ]; do sleep 0.2; done
    echo "$mode: first start, 20 records handled after $(since "$start") s"
    sleep 3; kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    EXACTLY_CONFIG=$dir/app.toml EFFECTS=$dir/effects.log RUST_LOG=error "$app" & pid=$!
    start=$(date +%s.%N)
    records 20 40 >"$dir/b.jsonl"; "$cli" produce --file "$dir/b.jsonl" kafka --brokers "$broker" --topic "$topic" >/dev/null
    until [ "$(handled "$dir")" -ge 40 ]; do sleep 0.2; done
    echo "$mode: after SIGKILL and a restart, 20 new records handled after $(since "$start") s"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

run dynamic ""
run static 'group_instance_id = "ledger-0"'
