#!/usr/bin/env bash
# Install and start the real infrastructure binderapi runs against on one Debian machine:
#   Docker engine (host networking only) -> local base image -> single-user, builder and Python images
#   -> container registry on 127.0.0.1 -> configurable-http-proxy for JupyterHub
#   -> PostgreSQL on 127.0.0.1 (the build store's shared backend, for the tests).
#
# usage: scripts/infra.sh [up|down|status|packages|dockerd|registry|images|chp|postgres]...
#   up      everything below, skipping what is already there (kept images make re-runs fast)
#   down    stop the daemons this script started (by the PIDs it recorded), nothing else
#
# env: BINDERAPI_INFRA_DIR  state directory (default ~/.cache/binderapi-infra)
#      REGISTRY_ADDR        registry listen address (default 127.0.0.1:5000)
#      FORCE_IMAGES=1       rebuild the images even if present
#      PG_PORT              PostgreSQL's port on 127.0.0.1 (default 55432)
#      PG_DATA              its data directory (default ~postgres/binderapi-infra: the server runs as
#                           the `postgres` user, which cannot reach a data directory under /root)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${BINDERAPI_INFRA_DIR:-$HOME/.cache/binderapi-infra}
REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}
BASE_IMAGE=binderapi/debian:bookworm
SINGLEUSER_IMAGE=binderapi/singleuser:latest
BUILDER_IMAGE=binderapi/repo2docker:2024.7.0
PYTHON_IMAGE=binderapi/python:3.11-bookworm  # BASE_IMAGE for building binderapi's own Dockerfile here
PG_PORT=${PG_PORT:-55432}
PG_USER=postgres  # the OS user the server runs as (PostgreSQL refuses root)
mkdir -p "$STATE"

say() { printf '[infra] %s\n' "$*" >&2; }
timed() { local s=$SECONDS; say "$1 ..."; "step_$1"; say "$1 done in $((SECONDS - s))s"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1 && [ -z "${FORCE_IMAGES:-}" ]; }

# Start a daemon as one plain background command so that $! is the daemon itself.
start_daemon() {  # name, command...
    local name=$1; shift
    nohup "$@" >"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

wait_for() {  # description, tries, command...
    local what=$1 tries=$2; shift 2
    for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    say "$what did not come up; see $STATE/*.log"; return 1
}

step_packages() {
    local need=()
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v docker-registry >/dev/null || need+=(docker-registry)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v git >/dev/null || need+=(git)
    command -v curl >/dev/null || need+=(curl)
    command -v npm >/dev/null || need+=(npm)
    [ -n "$(pg_bindir)" ] || need+=(postgresql)
    if [ ${#need[@]} -eq 0 ]; then say "packages already installed"; return; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

step_dockerd() {
    if docker info >/dev/null 2>&1; then say "Docker engine already running"; return; fi
    # No bridge: no private-range addresses. Every container and build uses host networking.
    start_daemon dockerd dockerd --host unix:///var/run/docker.sock \
        --bridge=none --iptables=false --ip-masq=false
    wait_for "dockerd" 240 docker info
}

step_registry() {
    if curl -sf "http://$REGISTRY_ADDR/v2/" >/dev/null; then say "registry already up"; return; fi
    mkdir -p "$STATE/registry"
    cat >"$STATE/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
YML
    start_daemon registry docker-registry serve "$STATE/registry.yml"
    wait_for "registry" 80 curl -sf "http://$REGISTRY_ADDR/v2/"
}

build_base_image() {
    # A minimal Debian made with debootstrap (no registry can be reached), carrying the host's
    # CA bundle so that TLS to the package registries works inside builds. The CA is per machine:
    # it is copied at set-up time and never committed.
    local rootfs="$STATE/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$STATE/debootstrap.log" 2>&1
    rm -f "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
    rm -rf "$rootfs"/var/lib/apt/lists/*
    printf '%s\n' 'deb http://deb.debian.org/debian bookworm main' \
        'deb http://deb.debian.org/debian bookworm-updates main' \
        'deb http://deb.debian.org/debian-security bookworm-security main' >"$rootfs/etc/apt/sources.list"
    mkdir -p "$rootfs/usr/local/share/ca-certificates" "$rootfs/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | docker import \
        -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' \
        -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        -c 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

build_image() {  # tag, context dir
    docker build --network host -q -t "$1" "$2" >"$STATE/build-$(basename "$2").log" 2>&1 \
        || { say "building $1 failed:"; tail -n 30 "$STATE/build-$(basename "$2").log" >&2; return 1; }
}

step_images() {
    have_image "$BASE_IMAGE" || { say "  base image (debootstrap)"; build_base_image; }
    have_image "$SINGLEUSER_IMAGE" || { say "  $SINGLEUSER_IMAGE"; build_image "$SINGLEUSER_IMAGE" "$ROOT/deploy/images/singleuser"; }
    have_image "$BUILDER_IMAGE" || { say "  $BUILDER_IMAGE"; build_image "$BUILDER_IMAGE" "$ROOT/deploy/images/repo2docker"; }
    have_image "$PYTHON_IMAGE" || { say "  $PYTHON_IMAGE"; build_image "$PYTHON_IMAGE" "$ROOT/deploy/images/python"; }
    return 0
}

step_chp() {
    local bin="$STATE/chp/node_modules/.bin/configurable-http-proxy"
    if [ -x "$bin" ]; then say "configurable-http-proxy already installed"; return; fi
    mkdir -p "$STATE/chp"
    (cd "$STATE/chp" && npm install --no-audit --no-fund --silent configurable-http-proxy@5 >/dev/null)
}

pg_bindir() { find /usr/lib/postgresql -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1; }
pg_up() { "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
pg_data() { echo "${PG_DATA:-$(getent passwd "$PG_USER" | cut -d: -f6)/binderapi-infra}"; }
# run as the postgres user, from / (it cannot read a working directory under /root); setpriv execs
PG_AS=(setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups)
as_pg() { (cd / && "${PG_AS[@]}" "$@"); }

# The tests' database: role and database `binderapi` (CREATEDB, so a fixture can make a database per
# test module), a password kept in $STATE/postgres.dsn (0600) and set again on every run, so the file
# and the server always agree. Only loopback TCP with a password, and the server's own socket for
# the postgres user (peer), in its data directory.
step_postgres() {
    local bin data dsnfile=$STATE/postgres.dsn password
    bin=$(pg_bindir); data=$(pg_data)
    [ -n "$bin" ] || { say "PostgreSQL is not installed (run: $0 packages)"; return 1; }
    getent passwd "$PG_USER" >/dev/null || useradd --system --home-dir /var/lib/postgresql --create-home "$PG_USER"
    if pg_up; then
        say "PostgreSQL already up on 127.0.0.1:$PG_PORT"
    else
        if [ ! -s "$data/PG_VERSION" ]; then
            install -d -o "$PG_USER" -g "$PG_USER" -m 0700 "$data"
            as_pg "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
                --auth-local=peer --auth-host=scram-sha-256 >"$STATE/postgres-initdb.log" 2>&1 \
                || { say "initdb failed:"; tail -n 20 "$STATE/postgres-initdb.log" >&2; return 1; }
        fi
        # test settings: durability off (a crash loses only test data), room for several replicas
        (cd / && start_daemon postgres "${PG_AS[@]}" "$bin/postgres" -D "$data" -p "$PG_PORT" \
            -c listen_addresses=127.0.0.1 -c unix_socket_directories="$data" \
            -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off)
        wait_for "PostgreSQL" 120 pg_up
    fi
    if [ -s "$dsnfile" ]; then
        password=$(sed -E 's|^[^:]+://[^:]+:([^@]+)@.*|\1|' "$dsnfile")
    else
        password=$(od -An -N16 -tx1 /dev/urandom | tr -d " \n")
    fi
    as_pg "$bin/psql" -q -h "$data" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -v pw="$password" >/dev/null <<'SQL'
SELECT 'CREATE ROLE binderapi LOGIN CREATEDB' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'binderapi')\gexec
ALTER ROLE binderapi PASSWORD :'pw';
SELECT 'CREATE DATABASE binderapi OWNER binderapi' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'binderapi')\gexec
SQL
    (umask 077; echo "postgresql+asyncpg://binderapi:$password@127.0.0.1:$PG_PORT/binderapi" >"$dsnfile")
}

stop_pid() {  # name, signal: stop a daemon this script started, by its recorded PID, and wait for it
    local pidfile="$STATE/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && grep -qa "$1" "/proc/$pid/cmdline"; then  # not a reused PID
        say "stopping $1 (pid $pid)"; kill "-$2" "$pid"
        for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$pidfile"
}

step_down() {
    stop_pid postgres INT  # fast shutdown: clients are disconnected, not waited for
    for name in registry dockerd; do
        local pidfile="$STATE/$name.pid"
        [ -f "$pidfile" ] || continue
        local pid; pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then say "stopping $name (pid $pid)"; kill "$pid"; fi
        rm -f "$pidfile"
    done
}

step_status() {
    docker info >/dev/null 2>&1 && say "docker: up" || say "docker: down"
    curl -sf "http://$REGISTRY_ADDR/v2/" >/dev/null && say "registry: up at $REGISTRY_ADDR" || say "registry: down"
    for img in "$BASE_IMAGE" "$SINGLEUSER_IMAGE" "$BUILDER_IMAGE" "$PYTHON_IMAGE"; do
        docker image inspect "$img" >/dev/null 2>&1 && say "image $img: present" || say "image $img: missing"
    done
    pg_up && say "postgres: up at 127.0.0.1:$PG_PORT ($STATE/postgres.dsn)" || say "postgres: down"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(up)
for s in "${steps[@]}"; do
    case $s in
        up) for x in packages dockerd registry images chp postgres; do timed $x; done
            echo "CHP_BIN=$STATE/chp/node_modules/.bin/configurable-http-proxy"
            # the password stays in the file (0600), which tests/fixtures/postgres.py reads
            echo "BINDERAPI_TEST_POSTGRES_URL=$(sed -E 's|:[^:@/]+@|:***@|' "$STATE/postgres.dsn") (in $STATE/postgres.dsn)" ;;
        down|status) step_$s ;;
        packages|dockerd|registry|images|chp|postgres) timed "$s" ;;
        *) say "unknown step: $s"; exit 2 ;;
    esac
done
