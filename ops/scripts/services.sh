#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ are installed and running on this machine.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { rabbitmqctl -q status >/dev/null 2>&1; }

if ! command -v pg_ctlcluster >/dev/null || ! command -v rabbitmq-server >/dev/null; then
  echo "installing postgresql and rabbitmq-server" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql rabbitmq-server >/dev/null
fi

if ! pg_up; then
  version="$(ls /etc/postgresql | sort -V | tail -n1)"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Tests connect as postgres over TCP without a password, as on the development machines.
  if ! grep -q "blendq: trust local tcp" "$hba"; then
    sed -i '1i # blendq: trust local tcp\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
fi
if ! rabbit_up; then
  rabbitmq-server -detached
fi

for _ in $(seq 1 60); do
  if pg_up && rabbit_up; then
    exit 0
  fi
  sleep 1
done
pg_up || echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
rabbit_up || echo "RabbitMQ did not come up" >&2
exit 1
