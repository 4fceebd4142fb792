# Conduit: the service and the tools in one image.
#   docker build -t conduit .
#   openssl rand -hex 32 > conduit-token.txt && chmod 644 conduit-token.txt  # readable by uid 10001
#   docker run --rm -p 127.0.0.1:50051:50051 -v "$PWD/conduit-token.txt:/run/secrets/conduit-token:ro" \
#     conduit serve --listen 0.0.0.0:50051 --token-file /run/secrets/conduit-token
#   conduit health --via 127.0.0.1 --token-file conduit-token.txt
# The base images are arguments, for machines without a registry that make
# their own (scripts/compose-test.sh debootstraps them).
ARG BUILD_BASE=debian:bookworm
ARG RUNTIME_BASE=debian:bookworm-slim
FROM ${BUILD_BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake ninja-build g++ pkg-config libboost1.81-dev libcli11-dev libssl-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What the build reads, alone: editing tests, scripts or docs keeps this
# stage's cache.
COPY CMakeLists.txt ./
COPY cmake cmake
COPY proto proto
COPY src src
COPY fuzz fuzz
COPY examples examples
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONDUIT_BUILD_TESTS=OFF \
 && cmake --build /build --target conduit \
 && strip /build/src/cli/conduit

# The compose file's test runner: the tools plus the Python client, pip
# installed (offline) into a venv that sees Debian's grpcio and protobuf
# (docker compose builds it with target: tests).
FROM ${RUNTIME_BASE} AS tests
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgrpc++1.51 libssl3 python3-grpcio python3-pip python3-venv \
      python3-setuptools python3-aiohttp \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 conduit && useradd --system --uid 10001 --gid 10001 --no-create-home conduit
COPY --from=build /build/src/cli/conduit /usr/local/bin/conduit
COPY clients/python /tmp/conduit-client
RUN python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-build-isolation /tmp/conduit-client \
 && rm -rf /tmp/conduit-client
ENV PATH=/opt/venv/bin:$PATH
COPY tests/compose/integration.py tests/compose/hidden_backend.py tests/compose/steps.sh /opt/conduit/tests/compose/
USER conduit
ENTRYPOINT ["conduit"]

# The image: the service and the tools. The user's ids are fixed (10001)
# because Compose without swarm bind-mounts a secret with the host file's
# owner and mode: the token file must be readable by uid or gid 10001.
FROM ${RUNTIME_BASE}
# Runtime libraries only: gRPC (which brings protobuf, abseil, c-ares, re2) and OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgrpc++1.51 libssl3 openssl ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 conduit && useradd --system --uid 10001 --gid 10001 --no-create-home conduit \
 && install -d -o conduit -g conduit /run/conduit-sockets
COPY --from=build /build/src/cli/conduit /usr/local/bin/conduit
USER conduit
EXPOSE 50051
# The service's own health endpoint (grpc.health.v1); other roles override it.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD ["conduit", "health", "--via", "127.0.0.1:50051"]
ENTRYPOINT ["conduit"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--token-file", "/run/secrets/conduit-token"]
