#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the distributed-search tests.
#
#   .ci/postgres.sh start DIR   initdb a cluster in DIR, start it on a unix socket in DIR (no TCP
#                               port, so parallel CI jobs cannot collide), create a database and
#                               print its URL (one line) for BUDGETLORA_TEST_PG_URL
#   .ci/postgres.sh stop DIR    stop that cluster and delete DIR
#
# PostgreSQL refuses to run as root, so under root the server runs as the `postgres` system user
# that the Debian package creates; under any other user it runs as that user.
# Needs the Debian package `postgresql` (initdb is looked up in /usr/lib/postgresql/*/bin).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
dir=$2
db=budgetlora_test
role=budgetlora

bindir() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -z $found || ! -x $found/initdb ]]; then
    echo "postgres.sh: no initdb in /usr/lib/postgresql/*/bin; apt-get install -y postgresql" >&2
    exit 1
  fi
  echo "$found"
}

as_owner() {  # run a command as the cluster's (non-root) owner
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case $action in
  start)
    bin=$(bindir)
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
      echo "postgres.sh: running as root and there is no 'postgres' user to run the server as" >&2
      exit 1
    fi
    mkdir -p "$dir/sock"
    [[ $(id -u) -eq 0 ]] && chown -R postgres "$dir"
    chmod 755 "$dir" "$dir/sock"  # the socket must be reachable by the user who runs the tests
    # trust on the socket only: the socket lives in DIR, and nothing listens on TCP.
    as_owner "$bin/initdb" -D "$dir/data" -U "$role" -A trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 ||
      { tail -n 5 "$dir/initdb.log" >&2; exit 1; }
    # Access to the socket is open to every local user (the tests may run as root or not).
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses='' -c unix_socket_directories='$dir/sock' -c unix_socket_permissions=0777 -c max_connections=100 -c fsync=off" \
      start >/dev/null || { tail -n 5 "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h "$dir/sock" -U "$role" "$db"
    # The driver is named: SQLAlchemy < 2.1 would take plain postgresql:// to mean psycopg2.
    echo "postgresql+psycopg://$role@/$db?host=$dir/sock"
    ;;
  stop)
    if [[ -d $dir/data ]]; then
      bin=$(bindir)
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *) usage ;;
esac
