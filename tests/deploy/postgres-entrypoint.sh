#!/bin/sh
# Test stand-in for the postgres image's entrypoint (no image registry is reachable here):
# Debian's PostgreSQL from the archive, initialised the way the official image does it from
# POSTGRES_USER, POSTGRES_DB and POSTGRES_PASSWORD_FILE (password auth over TCP), listening
# on PG_LISTEN:PGPORT. Used by tests/deploy/compose.host.yml only.
set -eu
bin="$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
data=/var/lib/postgresql/data
mkdir -p "$data" /run/postgresql
chown -R postgres:postgres "$data" /run/postgresql
chmod 0700 "$data"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$data/PG_VERSION" ]; then
  as_postgres "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" -E UTF8 --locale=C.UTF-8 \
    --auth-host=scram-sha-256 --auth-local=peer >/dev/null
  echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
    | as_postgres "$bin/postgres" --single -D "$data" postgres >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$bin/postgres" -D "$data" -c "listen_addresses=${PG_LISTEN:-*}" -p "${PGPORT:-5432}" \
  -c unix_socket_directories=/run/postgresql
