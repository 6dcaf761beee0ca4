# syntax=docker/dockerfile:1
#
# cloudlens container image.
#
#   docker build -t cloudlens:0.1.0 .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=postgres://cloudlens:PASSWORD@db:5432/cloudlens cloudlens:0.1.0
#
# In a container cloudlens must be given DATABASE_URL (a PostgreSQL with TimescaleDB in
# shared_preload_libraries). It then writes nothing to disk, so the root filesystem can be
# read-only. Migrations are compiled into the binary (refinery embed_migrations!) and are
# applied by the server at start.

########################################################################################
# Build stage
########################################################################################
FROM rust:1-bookworm AS build
WORKDIR /build

# 1. Dependency layer: build every dependency of the workspace against stub sources, so
#    that this (slow) layer is rebuilt only when Cargo.toml / Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo build --release --locked --bin cloudlens \
 && rm -rf src loadtest/src \
            target/release/cloudlens target/release/cloudlens.d \
            target/release/deps/cloudlens-* target/release/deps/libcloudlens-* \
            target/release/.fingerprint/cloudlens-*

# 2. The real sources. sql/ is embedded at compile time; loadtest/ is a workspace member,
#    so the workspace manifest needs it to be present even though it is not built here.
COPY src/ src/
COPY sql/ sql/
COPY loadtest/ loadtest/
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin cloudlens \
 && install -D -m 0755 target/release/cloudlens /out/cloudlens

########################################################################################
# Runtime stage
########################################################################################
FROM debian:bookworm-slim AS runtime

# ca-certificates for outgoing TLS of future cloud SDK calls, curl for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cloudlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin cloudlens

COPY --from=build /out/cloudlens /usr/local/bin/cloudlens

ENV CLOUDLENS_LISTEN=0.0.0.0:8080 \
    CLOUDLENS_LOG_FORMAT=json \
    RUST_LOG=info

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz >/dev/null || exit 1

# SIGTERM drains in-flight requests for up to 30 s; give the runtime at least that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cloudlens"]
CMD ["serve"]
