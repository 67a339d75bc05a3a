#!/usr/bin/env bash
# Schemathesis (property-based API testing, from PyPI) against the server's own /openapi.json.
#
# For each store (SQLite always; PostgreSQL too when TEST_DATABASE_URL is set, on a fresh
# database created from it: PostgreSQL is where NUL characters and other hostile text bite):
#   1. start `talkamie serve` on a fresh data dir, with an admin (CLI), a senior and a verified
#      volunteer (sign-up);
#   2. run schemathesis with the senior's token over every operation, then a shorter run with
#      the admin's token;
#   3. stop the server.
# Checks: no server error (any 5xx), and every answer conforms to the spec: a documented
# status, content type, body schema (the envelopes of src/http/spec.rs) and headers.
# Exits non-zero if any run found a failure or the server logged a panic.
#
# Usage: scripts/schemathesis.sh        (see the knobs below; needs python3, curl, psql for
#        PostgreSQL, and schemathesis: pip install "schemathesis==4.32.5")
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- Knobs -------------------------------------------------------------------------------------
SCHEMATHESIS_VERSION=4.32.5                        # the version this script was written against
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-50}              # test cases per operation and phase (user run)
ADMIN_EXAMPLES=${SCHEMATHESIS_ADMIN_EXAMPLES:-20}  # the same for the admin run
SEED=${SCHEMATHESIS_SEED:-20261126}                # fixed, so a failure reproduces
WORKERS=${SCHEMATHESIS_WORKERS:-2}
BIN=${TALKAMIE_BIN:-target/debug/talkamie}       # set: use it as is (CI: cargo test built it)
REPORT_DIR=${SCHEMATHESIS_REPORT_DIR:-target/schemathesis}

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance
CHECKS+=,response_schema_conformance,response_headers_conformance

# Operations left out, by operationId:
# - sign_out: it ends the very session the run authenticates with (every later call is 401);
# - delete_user: the stateful phase learns the caller's own id and deletes the account;
# - advance_clock: the test clock, off (404) unless TALKAMIE_ADJUSTABLE_CLOCK=true.
# Not in the spec, so never called: /v1/ws (WebSocket, see tests/e2e/ws_fuzz.rs), /docs.
EXCLUDE=(--exclude-operation-id sign_out --exclude-operation-id delete_user
    --exclude-operation-id advance_clock)

step() { printf '\n==> %s\n' "$*"; }

command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }
if ! command -v schemathesis >/dev/null; then
    echo "schemathesis is not installed: pip install \"schemathesis==$SCHEMATHESIS_VERSION\"" >&2
    exit 2
fi
installed=$(schemathesis --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+)+' | head -1 || true)
if [ "$installed" != "$SCHEMATHESIS_VERSION" ]; then
    echo "warning: schemathesis $installed installed; this script pins $SCHEMATHESIS_VERSION" >&2
fi

# --- Build (skipped when TALKAMIE_BIN names a binary) -------------------------------------------
if [ -z "${TALKAMIE_BIN:-}" ]; then
    step "cargo build --bin talkamie"
    cargo build --bin talkamie
fi
[ -x "$BIN" ] || { echo "no server binary at $BIN" >&2; exit 2; }

WORK=$(mktemp -d)
mkdir -p "$REPORT_DIR"
REPORT_DIR=$(cd "$REPORT_DIR" && pwd)
SERVER_PID=""
DATABASES=()

cleanup() {
    stop_server
    for db in "${DATABASES[@]}"; do
        psql -w -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

# A JSON field of stdin, e.g. `json_field data.tokens.access`.
json_field() {
    python3 -c 'import json, sys
value = json.load(sys.stdin)
for part in sys.argv[1].split("."):
    value = value[part]
print(value)' "$1"
}

post_json() { # path body
    curl -sS -X POST "$BASE$1" -H 'content-type: application/json' -d "$2"
}

failures=0

# run_store LABEL [DATABASE_URL]
run_store() {
    local label=$1 database_url=${2:-}
    local data_dir="$WORK/$label" log="$WORK/$label.log"
    mkdir -p "$data_dir"
    # The server's settings: a fresh data dir (SQLite lives there) or the fresh database.
    local env=(env -u DATABASE_URL TALKAMIE_DATA_DIR="$data_dir" RUST_LOG=warn)
    [ -n "$database_url" ] && env+=(DATABASE_URL="$database_url")

    step "$label: admin account (CLI)"
    "${env[@]}" "$BIN" admin create --email admin@schemathesis.test \
        --password admin-password-1 --name "Schemathesis Admin"

    step "$label: talkamie serve"
    "${env[@]}" PORT=0 "$BIN" serve >"$log" 2>&1 &
    SERVER_PID=$!
    BASE=""
    for _ in $(seq 1 120); do
        BASE=$(grep -oE 'talkamie listening on http://[0-9.:]+' "$log" | awk '{print $4}' || true)
        [ -n "$BASE" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; echo "server exited" >&2; exit 1; }
        sleep 0.5
    done
    [ -n "$BASE" ] || { cat "$log" >&2; echo "server did not start within 60 s" >&2; exit 1; }
    echo "$BASE"

    step "$label: a senior and a verified volunteer (sign-up), the admin's token (sign-in)"
    local senior volunteer admin user_token admin_token volunteer_id step
    senior=$(post_json /v1/auth/sign-up '{"email":"senior@schemathesis.test",
        "password":"senior-password-1","name":"Schemathesis Senior","type":"senior"}')
    user_token=$(json_field data.tokens.access <<<"$senior")
    # A volunteer, so that discovery, requests, bookings and reviews have someone to reach.
    volunteer=$(post_json /v1/auth/sign-up '{"email":"volunteer@schemathesis.test",
        "password":"volunteer-password-1","name":"Schemathesis Volunteer",
        "type":"volunteer"}')
    volunteer_id=$(json_field data.user.id <<<"$volunteer")
    admin=$(post_json /v1/auth/sign-in '{"email":"admin@schemathesis.test",
        "password":"admin-password-1"}')
    admin_token=$(json_field data.tokens.access <<<"$admin")
    for step in admin background; do
        curl -sSf -o /dev/null -X POST "$BASE/v1/admin/user/$volunteer_id/verification" \
            -H "Authorization: Bearer $admin_token" -H 'content-type: application/json' \
            -d "{\"step\":\"$step\",\"status\":\"complete\"}"
    done
    # Half the generated `{id}`s are real user ids (the other half stay random), so that
    # requests, bookings, reviews and profile updates get past "no such user"; some ids, keywords,
    # names and texts are hostile text the random generator rarely hits: a NUL (PostgreSQL text
    # cannot hold U+0000), its escapes, a right-to-left override, an emoji, SQL-ish quotes.
    cat >"$WORK/schemathesis.toml" <<EOF
[cache]
directory = "$REPORT_DIR/cache"

[dictionaries.ids]
values = ["$(json_field data.user.id <<<"$senior")", "$volunteer_id",
    "$(json_field data.user.id <<<"$admin")", "no\\u0000such"]

[dictionaries.hostile]
values = ["a\\u0000b", "\\u0000", "%00", "a\\\\u0000", "\\u202e", "😀", "'; --", " "]

[parameters]
"path.id" = { dictionary = "ids", probability = 0.5 }
"query.keyword" = { dictionary = "hostile", probability = 0.3 }
"body.name" = { dictionary = "hostile", probability = 0.2 }
"body.text" = { dictionary = "hostile", probability = 0.2 }
EOF

    local run who token examples
    for run in "user:$user_token:$EXAMPLES" "admin:$admin_token:$ADMIN_EXAMPLES"; do
        IFS=: read -r who token examples <<<"$run"
        step "$label: schemathesis as the $who ($examples examples per operation)"
        if ! schemathesis --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.json" \
            --header "Authorization: Bearer $token" \
            --checks "$CHECKS" \
            "${EXCLUDE[@]}" \
            --max-examples "$examples" \
            --seed "$SEED" \
            --workers "$WORKERS" \
            --request-timeout 30 \
            --no-color \
            --report junit \
            --report-junit-path "$REPORT_DIR/$label-$who.xml"; then
            echo "FAILED: $label, $who run; the server's last warnings and errors:" >&2
            grep -E 'WARN|ERROR' "$log" | tail -20 >&2 || true
            failures=$((failures + 1))
        fi
    done

    if grep -q 'panicked at' "$log"; then
        grep -B2 -A10 'panicked at' "$log" >&2
        echo "FAILED: $label: the server panicked" >&2
        failures=$((failures + 1))
    fi
    step "$label: stopping the server"
    stop_server
}

run_store sqlite

if [ -n "${TEST_DATABASE_URL:-}" ]; then
    command -v psql >/dev/null || { echo "TEST_DATABASE_URL is set but psql is missing" >&2; exit 2; }
    db="talkamie_schemathesis_$(date +%s)_$$"
    step "postgres: CREATE DATABASE $db"
    psql -w -q "$TEST_DATABASE_URL" -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db"
    DATABASES+=("$db")
    run_store postgres "${TEST_DATABASE_URL%/*}/$db"
else
    echo "TEST_DATABASE_URL is unset: skipping the PostgreSQL run"
fi

if [ "$failures" -gt 0 ]; then
    step "schemathesis: $failures failing run(s); JUnit reports in $REPORT_DIR"
    exit 1
fi
step "schemathesis: no failures"
