# sermatec-bridge: the MQTT bridge for Sermatec hybrid inverters. One image for Docker
# Compose and for the Home Assistant app (the Supervisor builds this file, from this folder).
# Build stage: the project and its dependencies installed under /install, which the final
# stage copies as it is (one layer of exactly what runs, nothing deleted later).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sermatec_bridge ./sermatec_bridge
RUN pip install --no-cache-dir --no-warn-script-location --prefix=/install .

# Final stage: no compilers, no build tools, no pip run, nothing written outside
# /run/sermatec-bridge.
# It runs as root by default because the Home Assistant Supervisor starts an app as the
# image's user and hands it its options in a file only root may read; docker-compose.yml
# runs it as the user made here (10001) on a read-only root filesystem.
# /run/sermatec-bridge (the heartbeat) is writable for any user, like /tmp, as the volume
# or a tmpfs mounted over it (owned by root; compose gives it this mode) must be.
# No /etc/localtime of its own: the zone is TZ, the host's /etc/localtime mounted by
# compose, or UTC (the Home Assistant app asks the Supervisor).
FROM python:3.12-slim
LABEL org.opencontainers.image.title="sermatec-bridge" \
      org.opencontainers.image.description="Sermatec hybrid inverters in Home Assistant over MQTT, without the vendor cloud" \
      org.opencontainers.image.source="https://github.com/sermatec-bridge/sermatec-bridge" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin bridge \
    && install -d -m 1777 /run/sermatec-bridge \
    && rm -f /etc/localtime /etc/timezone
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERMATEC_LOG__FORMAT=json \
    SERMATEC_HEALTH__FILE=/run/sermatec-bridge/health.json
VOLUME ["/run/sermatec-bridge"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["sermatec-bridge", "health"]
ENTRYPOINT ["sermatec-bridge"]
CMD ["run"]
