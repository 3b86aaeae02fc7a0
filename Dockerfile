# swarm-registry container image.
#
#   docker build -t swarm-registry .          # builds the binary from source (stage "build")
#
# The runtime stage holds the binary and CA certificates only. A binary built elsewhere (the
# test bed builds it on the host, where cargo already has every crate) goes in through the
# "prebuilt" stage instead: scripts/build-image --binary PATH does that.

# Where the runtime stage takes the binary from: "build" (compile here) or "prebuilt" (a
# binary and a CA bundle in the build context, under prebuilt/).
ARG BINARY_FROM=build
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin swarm-registry \
    && mkdir -p /out \
    && cp target/release/swarm-registry /out/swarm-registry \
    && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

FROM scratch AS prebuilt
COPY prebuilt/swarm-registry /out/swarm-registry
COPY prebuilt/ca-certificates.crt /out/ca-certificates.crt

FROM ${BINARY_FROM} AS binary

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="swarm-registry" \
      org.opencontainers.image.description="Live registry of autoscaled Docker Swarm services: REST, SSE and RabbitMQ Streams" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/swarm-registry /usr/local/bin/swarm-registry
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 5001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["swarm-registry", "healthcheck"]
ENTRYPOINT ["swarm-registry"]
CMD ["serve"]
