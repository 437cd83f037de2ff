#!/usr/bin/env bash
# Removes what a killed multi-host test run left behind: every network
# namespace named klmh<pid>-* whose test process <pid> is gone, after
# killing the processes still inside it (PostgreSQL, Redis, Kowloon).
# Deleting a namespace deletes its veths and bridge. The test does the same
# at its start (mh.cleanup_stale); this is for a machine where it will not
# run again soon. Namespaces of a live run are left alone.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "cleanup.sh: needs root (ip netns)" >&2; exit 1; }
ip netns list | awk '{ print $1 }' | while read -r ns; do
    [[ $ns =~ ^klmh([0-9]+)-[a-z0-9]+$ ]] || continue
    pid=${BASH_REMATCH[1]}
    if [ -d "/proc/$pid" ]; then
        echo "cleanup.sh: $ns belongs to running process $pid: kept"
        continue
    fi
    for p in $(ip netns pids "$ns"); do
        kill -CONT "$p" 2>/dev/null || true
        kill -KILL "$p" 2>/dev/null || true
    done
    ip netns del "$ns"
    echo "cleanup.sh: deleted $ns"
done
