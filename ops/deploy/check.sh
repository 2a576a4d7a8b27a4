#!/usr/bin/env bash
# The deployment check (README: Operating; not in CI): build the blendq image from Debian
# packages alone and run the stack of ops/deploy/check/compose.yaml once, then prove that
# a 20-prompt job completes and that Prometheus scrapes every blendq process.
#
#   sudo ops/deploy/check.sh        (root: dockerd, debootstrap; a Debian bookworm host)
#
# Needs: Debian's docker.io, docker-compose and debootstrap packages; PostgreSQL and
# RabbitMQ already running on the host (BLENDQ_CHECK_PG, default 127.0.0.1:5432 as
# postgres with trust; rabbitmqctl on the host). The stack gets a database and a vhost of
# its own (blendq_deploy_check), dropped at the end, and ports 18000, 19090, 19100-19105.
# No image is pulled: the base is debootstrapped (cached as blendq-base:debian), pip in the
# build reaches PyPI, and torch is the CPU wheel pinned in ops/scripts/constraints-cpu.txt,
# taken from pip's find-links directory as bootstrap.sh takes it (BLENDQ_TORCH_WHEEL_DIR,
# default /opt/wheels). A dockerd this script starts, it stops. Exit 0 only if it all held.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
docker=/usr/bin/docker          # the CLI of Debian's docker.io, matching its dockerd
compose=(docker-compose -p blendq-check -f ops/deploy/check/compose.yaml)
name=blendq_deploy_check
pg_host=${BLENDQ_CHECK_PG_HOST:-127.0.0.1}
pg_port=${BLENDQ_CHECK_PG_PORT:-5432}
wheel_dir=${BLENDQ_TORCH_WHEEL_DIR:-/opt/wheels}
work=$(mktemp -d /tmp/blendq-deploy-check.XXXXXX)
started_dockerd=""
say() { printf '\n== %s\n' "$*"; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "${stack_up:-}" ]; then
    say "stopping the stack"
    "${compose[@]}" down -v --remove-orphans
    psql -h "$pg_host" -p "$pg_port" -U postgres -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)"
    rabbitmqctl -q delete_vhost "$name" > /dev/null
    rabbitmqctl -q delete_user "$name" > /dev/null
  fi
  if [ -n "$started_dockerd" ]; then
    say "stopping the dockerd this check started"
    kill "$started_dockerd"; wait "$started_dockerd" 2> /dev/null
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

for tool in dockerd docker-compose debootstrap psql rabbitmqctl python3; do
  command -v "$tool" > /dev/null || { echo "missing: $tool (apt-get install docker.io docker-compose debootstrap)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (dockerd, debootstrap)" >&2; exit 2; }
. /etc/os-release

say "ops/deploy/compose.yaml (the production file) parses"
POSTGRES_PASSWORD=x RABBITMQ_PASSWORD=x GRAFANA_PASSWORD=x \
  docker-compose -f ops/deploy/compose.yaml config --services | tr '\n' ' '; echo

say "dockerd"
if ! "$docker" info > /dev/null 2>&1; then
  dockerd > "$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do "$docker" info > /dev/null 2>&1 && break; sleep 1; done
fi
"$docker" version --format 'client {{.Client.Version}}, server {{.Server.Version}}'
docker-compose version --short

say "base image blendq-base:debian (debootstrap $VERSION_CODENAME)"
if ! "$docker" image inspect blendq-base:debian > /dev/null 2>&1; then
  rootfs="$work/rootfs"
  nice -n 10 debootstrap --variant=minbase "$VERSION_CODENAME" "$rootfs" http://deb.debian.org/debian \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }
  # The host's own CAs (a TLS-inspecting proxy's), so pip in the build trusts what the
  # host trusts; update-ca-certificates adds them when the build installs ca-certificates.
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2> /dev/null || true
  tar -C "$rootfs" -c . | "$docker" import - blendq-base:debian
  rm -rf "$rootfs"
fi
"$docker" image ls blendq-base:debian

say "build blendq:cpu"
# The context: the tracked files (as .dockerignore would leave them) plus the torch wheel
# at ops/wheels/, where the Dockerfile installs it from and then drops it.
ctx="$work/context"
mkdir -p "$ctx/ops/wheels"
git ls-files -z | grep -zv -e '^tests/' -e '^\.ci/' \
  | python3 -c 'import os,sys; sys.stdout.write("".join(p+"\0" for p in sys.stdin.read().split("\0") if p and os.path.exists(p)))' \
  | tar --null -T - -c | tar -x -C "$ctx"
torch_pin=$(grep -E '^torch==' ops/scripts/constraints-cpu.txt | cut -d= -f3)
cp "$wheel_dir"/torch-"$torch_pin"+cpu-*.whl "$ctx/ops/wheels/"
ls "$ctx/ops/wheels"
# The legacy builder: BuildKit would pull the docker/dockerfile frontend the syntax line
# names; host networking so pip and apt reach their registries as the host does.
DOCKER_BUILDKIT=0 nice -n 10 "$docker" build -q --network host -f "$ctx/ops/deploy/Dockerfile" \
  --build-arg BASE_IMAGE=blendq-base:debian --build-arg VARIANT=cpu -t blendq:cpu "$ctx"
DOCKER_BUILDKIT=0 nice -n 10 "$docker" build -q --network host \
  -f ops/deploy/check/prometheus.Dockerfile --build-arg BASE_IMAGE=blendq-base:debian \
  -t blendq-prometheus:debian ops/deploy/check
"$docker" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^blendq'
"$docker" run --rm --entrypoint sh blendq:cpu -c \
  'id; python -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)"'

say "database and vhost $name on the host's servers"
psql -h "$pg_host" -p "$pg_port" -U postgres -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)"
psql -h "$pg_host" -p "$pg_port" -U postgres -qc "CREATE DATABASE $name"
password=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
rabbitmqctl -q delete_user "$name" > /dev/null 2>&1 || true
rabbitmqctl -q delete_vhost "$name" > /dev/null 2>&1 || true
rabbitmqctl -q add_vhost "$name"
rabbitmqctl -q add_user "$name" "$password" > /dev/null
rabbitmqctl -q set_permissions -p "$name" "$name" '.*' '.*' '.*'
export BLENDQ_CHECK_DATABASE_URL="postgresql+psycopg://postgres@$pg_host:$pg_port/$name"
export BLENDQ_CHECK_BROKER_URL="amqp://$name:$password@127.0.0.1:5672/$name"

say "compose up"
stack_up=1
"${compose[@]}" up -d
up_at=$(date +%s)
services=(dispatcher api gen-tiny-a gen-tiny-b gen-tiny-c rank fuse)
for _ in $(seq 90); do
  states=$(for s in "${services[@]}"; do
    "$docker" inspect -f '{{.State.Health.Status}}' "$("${compose[@]}" ps -q "$s")"; done | sort | uniq -c | tr '\n' ' ')
  [ "$states" = "      7 healthy " ] && break
  sleep 2
done
"${compose[@]}" ps
echo "healthy after $(( $(date +%s) - up_at )) s"
[ "$states" = "      7 healthy " ] || { echo "not every service became healthy: $states" >&2; "${compose[@]}" logs --tail 20; exit 1; }

say "a 20-prompt job"
mkdir -p "$work/in"
python3 -c 'import json
for i in range(20):
    print(json.dumps({"custom_id": f"p{i:02d}", "instruction": f"Write one sentence about the number {i}.", "input": ""}))' \
  > "$work/in/prompts.jsonl"
chmod -R a+rX "$work"
run=("${compose[@]}" run --rm -T --no-deps -v "$work/in:/in:ro" migrate)
job=$("${run[@]}" jobs submit /in/prompts.jsonl --models tiny-a,tiny-b,tiny-c 2> "$work/submit.err") \
  || { cat "$work/submit.err"; exit 1; }
echo "job $job"
started=$(date +%s)
if ! "${run[@]}" jobs status "$job" --watch --timeout 600 2> /dev/null; then
  echo "job $job did not complete" >&2; "${compose[@]}" logs --tail 30; exit 1
fi
echo "ended in $(( $(date +%s) - started )) s"
"${run[@]}" jobs status "$job" --json 2> /dev/null

say "queues of vhost $name (quorum: BLENDQ_QUORUM_QUEUES=true)"
rabbitmqctl -q list_queues -p "$name" name type consumers messages > "$work/queues"
grep -v '^celery_delayed_' "$work/queues"
echo "and $(grep -c '^celery_delayed_' "$work/queues") celery_delayed_* queues (countdowns), each $(grep '^celery_delayed_' "$work/queues" | cut -f2 | sort -u | tr '\n' ' ')"

say "Prometheus targets"
sleep 12   # two scrape intervals after the job, so the counters include it
python3 - <<'EOF'
import json, sys, urllib.parse, urllib.request

base = "http://127.0.0.1:19090/api/v1/"
def get(path):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.load(r)["data"]

targets = get("targets")["activeTargets"]
for t in sorted(targets, key=lambda t: t["scrapeUrl"]):
    print(f"{t['labels']['job']:18} {t['scrapeUrl']:36} {t['health']:5} "
          f"last scrape {t['lastScrape'][:19]} {t['lastError']}")
for query in ("sum by (stage) (blendq_tasks_total{outcome=\"succeeded\"})",
              "max by (state) (blendq_jobs)", "sum(blendq_generated_tokens_total)"):
    for r in get("query?query=" + urllib.parse.quote(query))["result"]:
        print(f"{query}  {r['metric']}  {r['value'][1]}")
up = [t for t in targets if t["health"] == "up"]
if len(targets) != 7 or len(up) != 7:
    sys.exit(f"Prometheus: {len(up)} of {len(targets)} targets up (7 expected)")
print("Prometheus: 7 of 7 targets up")
EOF

say "deployment check passed"
