# workerguard with the ops extra (Flower, Prometheus client, rich). Used by docker-compose.yml
# for the guard worker, beat and Flower.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WORKERGUARD_HOME=/var/lib/workerguard \
    WORKERGUARD_CONFIG=/app/examples/compose.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY workerguard ./workerguard
COPY examples ./examples
RUN pip install '.[ops]' \
    && useradd --system --home-dir /var/lib/workerguard --create-home --shell /usr/sbin/nologin workerguard

USER workerguard
CMD ["workerguard", "--help"]
