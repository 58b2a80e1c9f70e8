#!/usr/bin/env bash
# Make sure the servers the full test suite talks to are installed and listening on 127.0.0.1:
# PostgreSQL (SQL sources through SQLAlchemy; Airflow's metadata in tests/test_celery.py), Redis (the
# Celery broker of tests/test_celery.py), the network tools that test's two worker hosts need
# (iproute2's `ip netns`, socat, util-linux's unshare; openssh-server and sshfs, the file server
# and client through which the hosts reach the lake) and Chromium (web page tests, via
# install-chromium.sh).
# Idempotent: on a machine where they already run, this only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "ci-services: installing PostgreSQL from Debian packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  conf=/etc/postgresql/$version/main
  # local trust authentication on loopback only (a throw-away test server)
  if ! grep -q "credit-ci" "$conf/pg_hba.conf"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust # credit-ci\nlocal all all trust # credit-ci' "$conf/pg_hba.conf"
  fi
  as_root sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "$conf/postgresql.conf"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main restart
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test"
fi
echo "ci-services: PostgreSQL ready on 127.0.0.1:5432 (database test)"

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v sshfs >/dev/null 2>&1 || missing+=(sshfs)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci-services: installing ${missing[*]} from Debian packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
if ! redis_up; then
  as_root redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no >/dev/null
  for _ in $(seq 30); do redis_up && break; sleep 1; done
fi
redis_up
# (tests/test_celery.py starts its own SSH server, listening only on its hosts' links)
echo "ci-services: Redis ready on 127.0.0.1:6379; ip, socat, unshare, sshd and sshfs installed"

if [ -x scripts/install-chromium.sh ]; then
  bash scripts/install-chromium.sh
fi
