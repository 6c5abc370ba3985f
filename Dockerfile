# PlantPulse images, one multi-stage file:
#   worker    - a Bytewax streaming worker (one process of the cluster)
#   code      - the Dagster code location (gRPC server)
#   webserver - the Dagster UI
#   daemon    - the Dagster daemon (schedules, sensors, run queue)
#   mlflow    - the MLflow tracking/registry server
#   mosquitto, postgres - the broker and the database, from Debian packages on the same base
# BASE_IMAGE defaults to the public Python image; where no registry is reachable,
# scripts/container-engine.sh builds a Debian bookworm + python3.11 image and `make deploy-test`
# passes it here.
ARG BASE_IMAGE=python:3.11-slim

# ---- mosquitto: the MQTT broker, from Debian's package ---------------------------------------
FROM ${BASE_IMAGE} AS mosquitto
RUN apt-get update && apt-get install -y --no-install-recommends mosquitto \
 && rm -rf /var/lib/apt/lists/*
COPY docker/mosquitto.conf /etc/mosquitto/plantpulse.conf
USER mosquitto
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
  CMD ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 1883), 2).close()"]
CMD ["mosquitto", "-c", "/etc/mosquitto/plantpulse.conf"]

# ---- postgres: the Dagster instance store and the MLflow backend -----------------------------
FROM ${BASE_IMAGE} AS postgres
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/plantpulse-pg && chown postgres /var/lib/plantpulse-pg
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENV PGDATA=/var/lib/plantpulse-pg/data PGPORT=5432
HEALTHCHECK --interval=10s --timeout=5s --retries=10 \
  CMD ["sh", "-c", "/usr/lib/postgresql/15/bin/pg_isready -h 127.0.0.1 -p $PGPORT"]
CMD ["sh", "/usr/local/bin/postgres-entrypoint.sh"]

# ---- deps: the virtualenv, from the lock file only, and the non-root user ------------------
# Few steps on purpose: on the vfs storage driver every step copies the whole file system.
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps -r /tmp/requirements.lock \
 && useradd --system --create-home --uid 10001 plantpulse \
 && mkdir -p /var/lib/plantpulse /app && chown -R plantpulse /var/lib/plantpulse /app

# ---- app: the project on top of the locked dependencies, run as the non-root user ------------
FROM deps AS app
# The project runs from /app on PYTHONPATH (no build step: nothing but the lock is installed).
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 \
    PLANTPULSE_HOME=/var/lib/plantpulse DAGSTER_HOME=/app/docker/dagster-home
WORKDIR /app
COPY --chown=plantpulse . /app
USER plantpulse

# ---- worker: one process of the Bytewax cluster ----------------------------------------------
# WORKER_INDEX (-i) and WORKER_ADDRESSES (-a, ';'-separated host:port of every process).
FROM app AS worker
ENV WORKER_INDEX=0 WORKER_ADDRESSES=127.0.0.1:2101 PLANTPULSE_FLOW=bytewax_flows.telemetry:flow
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
  CMD ["python", "docker/healthcheck.py", "lake"]
CMD ["sh", "-c", "exec python -m bytewax.run \"$PLANTPULSE_FLOW\" -i \"$WORKER_INDEX\" -a \"$WORKER_ADDRESSES\""]

# ---- code: the Dagster code location ---------------------------------------------------------
FROM app AS code
ENV DAGSTER_CODE_PORT=4000
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
  CMD ["sh", "-c", "dagster api grpc-health-check -p $DAGSTER_CODE_PORT -h 127.0.0.1"]
CMD ["sh", "-c", "exec dagster api grpc -m dagster_project.definitions -h 0.0.0.0 -p $DAGSTER_CODE_PORT"]

# ---- webserver: the Dagster UI ---------------------------------------------------------------
FROM app AS webserver
ENV DAGSTER_UI_PORT=3000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["sh", "-c", "python docker/healthcheck.py http http://127.0.0.1:$DAGSTER_UI_PORT/server_info"]
CMD ["sh", "-c", "exec dagster-webserver -w docker/workspace.yaml -h 0.0.0.0 -p $DAGSTER_UI_PORT"]

# ---- daemon: schedules, sensors and the run queue --------------------------------------------
FROM app AS daemon
HEALTHCHECK --interval=60s --timeout=30s --start-period=180s --retries=3 \
  CMD ["dagster-daemon", "liveness-check"]
CMD ["dagster-daemon", "run", "-w", "docker/workspace.yaml"]

# ---- mlflow: tracking and registry server (Postgres backend, S3 artifacts) ------------------
FROM app AS mlflow
ENV MLFLOW_PORT=5001
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "python docker/healthcheck.py http http://127.0.0.1:$MLFLOW_PORT/health"]
CMD ["sh", "-c", "exec mlflow server --host 0.0.0.0 --port $MLFLOW_PORT --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --artifacts-destination \"$MLFLOW_ARTIFACTS_DESTINATION\" --workers 1"]
