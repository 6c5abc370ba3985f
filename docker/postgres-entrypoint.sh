#!/bin/sh
# Initialise the cluster on first start, then run Postgres in the foreground.
# Databases: dagster (instance store) and mlflow (tracking/registry backend).
set -eu
BIN=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  "$BIN/initdb" -D "$PGDATA" -U postgres --auth=trust >/dev/null
  "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=127.0.0.1 -p $PGPORT" -w start >/dev/null
  for db in ${POSTGRES_DATABASES:-dagster mlflow}; do
    "$BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres "$db"
  done
  "$BIN/pg_ctl" -D "$PGDATA" -w stop >/dev/null
fi
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses="${POSTGRES_LISTEN:-127.0.0.1}" -p "$PGPORT"
