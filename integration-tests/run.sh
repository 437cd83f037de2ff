#!/usr/bin/env bash
# The test command: installs what is missing, builds with ASan+UBSan in
# build-asan/, starts one private PostgreSQL and Redis for the run in a fresh
# var/test-<pid>/ on free ports, runs every CTest test (unit + integration),
# stops the servers whatever happens, and exits with ctest's status.
#
#   integration-tests/run.sh              # everything
#   integration-tests/run.sh -R it_faults # extra arguments go to ctest
#   integration-tests/run.sh -L unit      # only the unit tests
#
# Environment: KLTEST_BUILD_DIR (default build-asan), KLTEST_KEEP=1 keeps
# var/test-<pid>/ (logs) even when everything passed. See docs/testing.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=deploy/local/lib.sh
. deploy/local/lib.sh

BUILD=${KLTEST_BUILD_DIR:-build-asan}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac

kl_install_packages
kl_build "$BUILD" -DKOWLOON_ASAN=ON -DCMAKE_BUILD_TYPE=Debug

RUN_DIR=$ROOT/var/test-$$
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR/logs"
PG_DIR=$RUN_DIR/pg
REDIS_DIR=$RUN_DIR/redis

# Every process ctest starts (pytest, the Kowloon processes the tests start)
# carries KLTEST_RUN_ID in its environment; it is exported just before ctest
# so that PostgreSQL and Redis do not.
KLTEST_RUN_ID="$$-$RANDOM$RANDOM"
run_pids() {
    local p
    for p in /proc/[0-9]*; do
        grep -qsxz "KLTEST_RUN_ID=$KLTEST_RUN_ID" "$p/environ" && echo "${p#/proc/}"
    done
    return 0
}

status=1
cleanup() {
    trap - EXIT INT TERM
    # After Ctrl-C, pytest may still be stopping its processes: give them
    # time, then stop what is left of this run, before the servers go.
    local pids _
    for _ in $(seq 1 30); do
        pids=$(run_pids)
        [ -z "$pids" ] && break
        sleep 0.5
    done
    if [ -n "$pids" ]; then
        kl_say "stopping what is left of this run: pids" "$pids"
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        sleep 2
        pids=$(run_pids)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    kl_redis_stop "$REDIS_DIR"
    kl_pg_stop "$PG_DIR"
    if [ "$status" -eq 0 ] && [ -z "${KLTEST_KEEP:-}" ]; then
        rm -rf "$RUN_DIR"
    else
        kl_say "kept $RUN_DIR (process logs in $RUN_DIR/logs, PostgreSQL log in $PG_DIR/postgres.log)"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'status=130; exit 130' INT
trap 'status=143; exit 143' TERM

PG_PORT=$(kl_free_port)
kl_pg_start "$PG_DIR" "$PG_PORT"
REDIS_PORT=$(kl_free_port)
kl_redis_start "$REDIS_DIR" "$REDIS_PORT"

export KLTEST_PG_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
export KLTEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export KLTEST_PG_DIR=$PG_DIR
export KLTEST_REDIS_DIR=$REDIS_DIR
export KLTEST_REDIS_PORT=$REDIS_PORT
export KLTEST_BUILD_DIR=$BUILD
export KLTEST_LOG_DIR=$RUN_DIR/logs
export KLTEST_RUN_ID
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

kl_say "running ctest in $BUILD (PostgreSQL :$PG_PORT, Redis :$REDIS_PORT, logs in $RUN_DIR/logs)"
set +e
ctest --test-dir "$BUILD" --output-on-failure --no-tests=error -j2 --timeout 300 "$@"
status=$?
set -e
if [ "$status" -eq 0 ]; then kl_say "all tests passed"; else kl_say "ctest failed (status $status)"; fi
