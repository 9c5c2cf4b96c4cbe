# sermatec-bridge: the MQTT bridge for Sermatec hybrid inverters.
# Build stage: make a wheel of the project and of its dependencies.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sermatec_bridge ./sermatec_bridge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Final stage: no compilers, no build tools, a non-root user, nothing written outside
# the declared volume (the root filesystem may be read-only).
FROM python:3.12-slim
LABEL org.opencontainers.image.title="sermatec-bridge" \
      org.opencontainers.image.description="Sermatec hybrid inverters in Home Assistant over MQTT, without the vendor cloud" \
      org.opencontainers.image.source="https://github.com/sermatec-bridge/sermatec-bridge" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bridge \
    && mkdir -p /run/sermatec-bridge \
    && chown 10001 /run/sermatec-bridge
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERMATEC_LOG__FORMAT=json \
    SERMATEC_HEALTH__FILE=/run/sermatec-bridge/health.json
VOLUME ["/run/sermatec-bridge"]
USER 10001
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["sermatec-bridge", "health"]
ENTRYPOINT ["sermatec-bridge"]
CMD ["run"]
