# syntax=docker/dockerfile:1
# The talkamie server. Build: docker build -t talkamie .   Run: docker run -p 8080:8080 talkamie

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artefacts between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release \
    && cp target/release/talkamie /usr/local/bin/talkamie

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /data --shell /usr/sbin/nologin talkamie \
    && mkdir -p /data \
    && chown talkamie:talkamie /data
COPY --from=build /usr/local/bin/talkamie /usr/local/bin/talkamie
# Migrations are compiled into the binary; /data holds the SQLite store and mail files.
ENV TALKAMIE_HOST=0.0.0.0 \
    TALKAMIE_DATA_DIR=/data
VOLUME /data
WORKDIR /data
USER talkamie
EXPOSE 8080
CMD ["talkamie", "serve"]
