# One image for every Kowloon binary; the container's command picks one:
#   docker run --rm kowloon:dev kowloon-config --names
#   command: ["kowloon-gateway"]   (docker-compose.yml; every kowloon-* and
#   kowloonctl are in /usr/local/bin)
# Multi-stage: Debian 12 with the -dev packages builds, Debian 12 slim with
# only the runtime libraries runs, as a non-root user.

# ---- build ---------------------------------------------------------------
FROM debian:12-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libzmq3-dev libczmq-dev libprotobuf-c-dev protobuf-c-compiler \
      libpq-dev libhiredis-dev libcurl4-openssl-dev libcivetweb-dev \
      libjansson-dev libcmocka-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build /build -j"$(nproc)" \
 && mkdir -p /out \
 && find /build -path /build/CMakeFiles -prune -o -type f \( -name 'kowloon-*' -o -name kowloonctl \) \
      -perm -u+x -exec install -m 0755 -t /out {} + \
 && install -d /out-share/migrations \
 && install -m 0644 -t /out-share/migrations services/workspace/migrations/V*.sql \
 && ls -l /out /out-share/migrations

# ---- runtime -------------------------------------------------------------
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libzmq5 libczmq4 libprotobuf-c1 libpq5 libhiredis0.14 libcurl4 \
      libcivetweb1 libjansson4 libssl3 ca-certificates \
      curl jq \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin kowloon
COPY --from=build /out/ /usr/local/bin/
# The product's migrations, for kowloon-migration (KOWLOON_MIGRATIONS_DIR).
COPY --from=build /out-share/migrations/ /usr/local/share/kowloon/migrations/
USER 10001:10001
# Logs are JSON lines on stderr; settings are KOWLOON_* variables
# (docs/configuration.md). No default binary on purpose: say which.
CMD ["kowloon-config", "--names"]
