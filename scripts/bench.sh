#!/usr/bin/env bash
# One command for the whole benchmark: a fresh PostgreSQL database per run, the release server,
# pgbench's one-row insert at the same client count (the machine's practical limit for durable
# commits), every `talkamie bench` scenario, SQLite's `commands` beside PostgreSQL's, three runs,
# and BENCHMARKS.md written from the medians (with the chart of latency against rate).
#
#   scripts/bench.sh                   # full: 3 runs, 20 s windows (about 30 minutes)
#   RUNS=1 DURATION=5 scripts/bench.sh # a quick look
#
# Needs PostgreSQL (PG_URL: a database the script may CREATE DATABASE from), pgbench and psql.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
CLIENTS=${CLIENTS:-16}
SOCKETS=${SOCKETS:-20000}
RPC_SOCKETS=${RPC_SOCKETS:-32}
CHAT_SOCKETS=${CHAT_SOCKETS:-200}
CHAT_RATES=${CHAT_RATES:-"50 100 200 500 1000"}
REBUILD_EVENTS=${REBUILD_EVENTS:-50000}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# TLS on a connection that never leaves the machine protects nothing and costs ~20 % of the
# CPU (both sides); pgbench and the servers connect alike.
PG_SSLMODE=${PG_SSLMODE:-disable}
RESULTS=${RESULTS:-bench-results}
PORT_A=${PORT_A:-18481}
PORT_B=${PORT_B:-18482}

step() { printf '\n==> %s\n' "$*" >&2; }

for tool in psql pgbench cargo; do
    command -v "$tool" >/dev/null || { echo "bench.sh needs $tool" >&2; exit 1; }
done
# 20,000 sockets need 20,000 descriptors on each side. Without CAP_SYS_RESOURCE the hard limit
# stays; the sockets that do not fit are reported as failed to open (EMFILE), not hidden.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -le "$SOCKETS" ]; then
    echo "note: open files are limited to $(ulimit -n) per process; $SOCKETS sockets will not all open" >&2
fi

step "cargo build --release"
cargo build --release
BIN=$PWD/target/release/talkamie
WORK=$(mktemp -d)
SERVERS=()
cleanup() {
    for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

base_url=${PG_URL%/*}
psql_admin() { psql -qAt -v ON_ERROR_STOP=1 "$PG_URL" "$@"; }

# Starts a server on port $1 with DATABASE_URL=$2 (empty: SQLite) and data dir $3; echoes its pid.
start_server() {
    local port=$1 database_url=$2 data_dir=$3 log=$WORK/server-$1.log
    mkdir -p "$data_dir"
    env -u DATABASE_URL PORT="$port" TALKAMIE_DATA_DIR="$data_dir" ${database_url:+DATABASE_URL="$database_url"} \
        RUST_LOG=warn TALKAMIE_WS_FRAMES_PER_SECOND=1000000 \
        TALKAMIE_CHAT_MESSAGES_PER_MINUTE=100000000 \
        "$BIN" serve >"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 100); do
        grep -q "talkamie listening" "$log" 2>/dev/null && { echo "$pid"; return; }
        sleep 0.2
    done
    echo "server on port $port did not start:" >&2
    cat "$log" >&2
    exit 1
}

# The servers are started inside $(...), so they are not this shell's children: `wait` cannot
# wait for them. Poll until the process is gone (its database sessions with it).
stop_server() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
}

bench() { "$BIN" bench "$@" --duration "$DURATION" --warmup "$WARMUP" --quiet >/dev/null; }

rm -rf "$RESULTS"
mkdir -p "$RESULTS"
cat >"$RESULTS/meta.json" <<META
{
  "date": "$(date -u +%Y-%m-%dT%H:%MZ)",
  "machine": "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)",
  "postgres": "$(psql_admin -c 'SHOW server_version')",
  "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)",
  "open files per process": "$(ulimit -n)",
  "settings": "runs $RUNS, warm-up $WARMUP s, window $DURATION s, $CLIENTS clients, chat $CHAT_SOCKETS sockets, rpc $RPC_SOCKETS sockets, $SOCKETS idle sockets, rebuild $REBUILD_EVENTS events"
}
META

for run in $(seq 1 "$RUNS"); do
    out=$RESULTS/run-$run
    mkdir -p "$out"
    db=talkamie_bench_${run}_$$
    url="$base_url/$db?sslmode=$PG_SSLMODE"
    step "run $run/$RUNS: fresh database $db"
    psql_admin -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"

    step "pgbench: one-row insert, $CLIENTS clients"
    psql -qAt -v ON_ERROR_STOP=1 "$url" \
        -c "CREATE TABLE pgbench_rows (id bigserial PRIMARY KEY, body jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())"
    echo "INSERT INTO pgbench_rows (body) VALUES ('{\"k\": 1}');" >"$WORK/insert.sql"
    pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$WORK/insert.sql" "$url" >"$WORK/pgbench.txt" 2>&1
    tps=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench.txt")
    latency=$(awk '/^latency average = / {print $4; exit}' "$WORK/pgbench.txt")
    cat >"$out/pgbench.json" <<PG
{"scenario": "pgbench", "label": "pgbench one-row insert clients=$CLIENTS", "unit": "inserts/s",
 "throughput": $tps, "errors": 0, "params": {"clients": $CLIENTS},
 "latencyMs": {"p50": $latency, "p90": $latency, "p99": $latency, "max": $latency, "mean": $latency}}
PG
    psql -qAt "$url" -c "DROP TABLE pgbench_rows"

    step "PostgreSQL: two instances"
    a=$(start_server "$PORT_A" "$url" "$WORK/a-$run"); SERVERS+=("$a")
    b=$(start_server "$PORT_B" "$url" "$WORK/b-$run"); SERVERS+=("$b")
    A=http://127.0.0.1:$PORT_A
    B=http://127.0.0.1:$PORT_B
    DATABASE_URL=$url TALKAMIE_DATA_DIR=$WORK/a-$run RUST_LOG=error \
        "$BIN" admin create --email bench-admin@example.com --password bench-admin-password >/dev/null

    step "commands (PostgreSQL)"
    bench commands --url "$A" --clients "$CLIENTS" --admin-email bench-admin@example.com \
        --admin-password bench-admin-password --mail-dir "$WORK/a-$run/mail" \
        --label "commands PostgreSQL clients=$CLIENTS" --out "$out/commands-postgres.json"
    for rate in $CHAT_RATES; do
        step "chat at $rate msg/s: one instance, then two"
        bench chat --url "$A" --sockets "$CHAT_SOCKETS" --rate "$rate" --out "$out/chat-rate-$rate.json"
        bench chat --url "$A" --url2 "$B" --sockets "$CHAT_SOCKETS" --rate "$rate" --out "$out/chat2-rate-$rate.json"
    done
    # After the chat runs, so they find the database as earlier versions of this script left it.
    step "commands (PostgreSQL), every other client on the second instance"
    bench commands --url "$A" --url2 "$B" --clients "$CLIENTS" --admin-email bench-admin@example.com \
        --admin-password bench-admin-password --mail-dir "$WORK/a-$run/mail" \
        --label "commands PostgreSQL clients=$CLIENTS instances=2" --out "$out/commands2-postgres.json"
    step "rpc"
    bench rpc --url "$A" --sockets "$RPC_SOCKETS" --out "$out/rpc.json"
    step "rebuild of the whole benchmark log (mixed events)"
    DATABASE_URL=$url TALKAMIE_DATA_DIR=$WORK/a-$run RUST_LOG=error \
        "$BIN" bench rebuild --url "$A" --events 1 --label "rebuild of the benchmark log" \
        --quiet --out "$out/rebuild-bench-log.json" >/dev/null

    step "sockets: $SOCKETS on a freshly started instance (users signed up on the other)"
    stop_server "$a"
    a=$(start_server "$PORT_A" "$url" "$WORK/a-$run"); SERVERS+=("$a")
    bench sockets --url "$A" --setup-url "$B" --sockets "$SOCKETS" --server-pid "$a" \
        --out "$out/sockets.json"
    stop_server "$a"
    stop_server "$b"
    psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"

    step "rebuild: $REBUILD_EVENTS events generated on a fresh database"
    db=talkamie_bench_rebuild_${run}_$$
    url="$base_url/$db?sslmode=$PG_SSLMODE"
    psql_admin -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    r=$(start_server "$PORT_A" "$url" "$WORK/r-$run"); SERVERS+=("$r")
    DATABASE_URL=$url TALKAMIE_DATA_DIR=$WORK/r-$run RUST_LOG=error \
        "$BIN" bench rebuild --url "$A" --events "$REBUILD_EVENTS" --quiet --out "$out/rebuild.json" >/dev/null
    stop_server "$r"
    psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"

    step "commands (SQLite, embedded)"
    s=$(start_server "$PORT_A" "" "$WORK/sqlite-$run"); SERVERS+=("$s")
    TALKAMIE_DATA_DIR=$WORK/sqlite-$run RUST_LOG=error \
        "$BIN" admin create --email bench-admin@example.com --password bench-admin-password >/dev/null
    bench commands --url "$A" --clients "$CLIENTS" --admin-email bench-admin@example.com \
        --admin-password bench-admin-password --mail-dir "$WORK/sqlite-$run/mail" \
        --label "commands SQLite clients=$CLIENTS" --out "$out/commands-sqlite.json"
    stop_server "$s"
done

step "BENCHMARKS.md"
"$BIN" bench report --results "$RESULTS" --out BENCHMARKS.md --charts docs/bench
