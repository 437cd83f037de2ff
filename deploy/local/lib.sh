# shellcheck shell=bash
# Shared by deploy/run.sh (the local stack), integration-tests/run.sh (the
# test command) and bench/: install what is missing, build, and start a
# private PostgreSQL and Redis (own data directory, own ports, nothing
# system-wide). Source it; every function prints what it does on stderr.

KL_ROOT=${KL_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
KL_PG_BIN=${KL_PG_BIN:-/usr/lib/postgresql/15/bin}

# Debian 12 packages Kowloon needs to build, run and test.
KL_PACKAGES=(build-essential cmake pkg-config git curl ca-certificates
    libzmq3-dev libczmq-dev libprotobuf-c-dev protobuf-c-compiler
    libpq-dev libhiredis-dev libcurl4-openssl-dev libcivetweb-dev
    libjansson-dev libcmocka-dev libssl-dev
    postgresql-15 postgresql-client-15 redis-server
    python3 python3-zmq python3-pytest
    nginx-light docker-compose systemd openssl python3-yaml iproute2 procps)

kl_say() { printf '%s\n' "kowloon: $*" >&2; }
kl_die() { printf '%s\n' "kowloon: error: $*" >&2; exit 1; }

# Installs any of KL_PACKAGES (and extra names given) that are missing.
kl_install_packages() {
    local missing=() p
    for p in "${KL_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    kl_say "installing missing Debian packages: ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq || kl_die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || kl_die "apt-get install ${missing[*]} failed"
    # Debian starts a system-wide redis and postgresql on install; Kowloon
    # never uses them (it runs its own, privately), so leave them be.
}

# kl_build BUILD_DIR [cmake args...]: configures once, builds everything.
kl_build() {
    local dir=$1; shift
    if [ ! -f "$dir/CMakeCache.txt" ]; then
        kl_say "configuring $dir"
        cmake -S "$KL_ROOT" -B "$dir" "$@" >"$dir.configure.log" 2>&1 ||
            { cat "$dir.configure.log" >&2; kl_die "cmake configure failed"; }
    fi
    kl_say "building in $dir"
    cmake --build "$dir" -j"$(nproc)" >"$dir.build.log" 2>&1 ||
        { tail -n 40 "$dir.build.log" >&2; kl_die "build failed (log: $dir.build.log)"; }
}

# A TCP port nobody listens on now, on 127.0.0.1, below the kernel's
# ephemeral range (deploy/local/free_port.py says why).
_KL_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kl_free_port() {
    python3 "$_KL_LIB_DIR/free_port.py"
}

# PostgreSQL will not run as root; as root we run it as the "postgres"
# user Debian's package creates.
_kl_pg_user() { [ "$(id -u)" -eq 0 ] && echo postgres || id -un; }
_kl_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# kl_pg_start DIR PORT [LISTEN [ALLOW_CIDR]]: a private cluster in DIR
# (created if missing), listening on 127.0.0.1:PORT and on a socket in
# DIR/run. Superuser "postgres", trust authentication on loopback only.
# LISTEN adds an address to listen on (the multi-host tests run it inside a
# network namespace of their own); ALLOW_CIDR adds trust for that network.
kl_pg_start() {
    local dir=$1 port=$2 listen=127.0.0.1 user
    [ -n "${3:-}" ] && [ "$3" != 127.0.0.1 ] && listen="127.0.0.1,$3"
    user=$(_kl_pg_user)
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$user" "$dir"
        # The postgres user must be able to reach DIR through its parents.
        local d=$dir
        while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        _kl_as_pg "$KL_PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; kl_die "initdb failed"; }
    fi
    if [ -n "${4:-}" ] && ! grep -q "^host all all $4 trust" "$dir/data/pg_hba.conf"; then
        _kl_as_pg sh -c "echo 'host all all $4 trust' >>'$dir/data/pg_hba.conf'"
    fi
    _kl_as_pg mkdir -p "$dir/run"
    _kl_as_pg "$KL_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-c listen_addresses=$listen -p $port -k $dir/run -c fsync=off -c max_connections=300 -c shared_buffers=128MB" \
        start >/dev/null || { tail -n 20 "$dir/postgres.log" >&2; kl_die "PostgreSQL did not start"; }
    kl_say "PostgreSQL on $listen:$port (data: $dir/data)"
}

kl_pg_stop() {
    local dir=$1
    [ -f "$dir/data/postmaster.pid" ] || return 0
    _kl_as_pg "$KL_PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# kl_redis_start DIR PORT [BIND]: a private Redis on 127.0.0.1:PORT, data in
# DIR. BIND adds an address (inside a network namespace of the multi-host
# tests; protected mode is then off, as those networks are private).
kl_redis_start() {
    local dir=$1 port=$2 bind=(--bind 127.0.0.1)
    [ -n "${3:-}" ] && [ "$3" != 127.0.0.1 ] && bind=(--bind 127.0.0.1 "$3" --protected-mode no)
    mkdir -p "$dir"
    redis-server --port "$port" "${bind[@]}" --dir "$dir" --save "" \
        --appendonly no --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" || kl_die "redis-server did not start"
    local i
    for i in $(seq 1 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && { kl_say "Redis on 127.0.0.1:$port"; return 0; }
        sleep 0.1
    done
    kl_die "Redis did not answer on port $port"
}

kl_redis_stop() {
    local dir=$1
    [ -f "$dir/redis.pid" ] || return 0
    kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    rm -f "$dir/redis.pid"
}
