#!/usr/bin/env bash
# Runs a whole cluster on 127.0.0.1: Redis (rate limits), NATS JetStream
# (hand-off), three mailsink instances, the Maildir consumer, and HAProxy in
# front. `cluster.sh start` / `cluster.sh stop` (every process is stopped by
# the PID recorded at start). Build first:
#   cargo build --release --example mailsink --example maildir_consumer --workspace
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
run=${CLUSTER_RUN:-$here/run}
bin=${CLUSTER_BIN:-$root/target/release/examples}
smtp_port=${SMTP_PORT:-2525}
redis_port=${REDIS_PORT:-6390}
nats_port=${NATS_PORT:-4223}
mx_ports=(2601 2602 2603)
rate=${RATE_LIMIT:-600}   # messages per minute and client IP, cluster-wide

wait_port() { # wait_port PORT NAME: at most 10 s
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start on port $1 (see $run/$2.log)" >&2
  return 1
}

spawn() { # spawn NAME COMMAND...: runs in the background, records its PID
  local name=$1; shift
  "$@" >"$run/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
}

start() {
  for b in mailsink maildir_consumer; do
    [ -x "$bin/$b" ] || { echo "$bin/$b missing: cargo build --release --example mailsink --example maildir_consumer --workspace" >&2; exit 1; }
  done
  mkdir -p "$run"
  spawn redis redis-server "$here/redis.conf" --port "$redis_port" --dir "$run"
  NATS_LISTEN="127.0.0.1:$nats_port" NATS_STORE="$run/jetstream" \
    spawn nats nats-server -c "$here/nats-server.conf"
  wait_port "$redis_port" redis
  wait_port "$nats_port" nats
  for i in 1 2 3; do
    spawn "mx$i" "$bin/mailsink" --listen "127.0.0.1:${mx_ports[i-1]}" --hostname "mx$i.cluster.test" \
      --proxy-protocol 127.0.0.1 --rate-limit "$rate" --redis "redis://127.0.0.1:$redis_port/" \
      --nats "nats://127.0.0.1:$nats_port" --nats-stream SMTP --nats-subject smtp.accepted
  done
  for i in 1 2 3; do wait_port "${mx_ports[i-1]}" "mx$i"; done
  spawn consumer "$bin/maildir_consumer" --nats "nats://127.0.0.1:$nats_port" --stream SMTP --maildir "$run/maildir"
  CLUSTER_BIND="127.0.0.1:$smtp_port" CLUSTER_RUN="$run" \
    MX1="127.0.0.1:${mx_ports[0]}" MX2="127.0.0.1:${mx_ports[1]}" MX3="127.0.0.1:${mx_ports[2]}" \
    spawn haproxy haproxy -db -f "$here/haproxy.cfg"
  wait_port "$smtp_port" haproxy
  echo "cluster up: SMTP on 127.0.0.1:$smtp_port, mail in $run/maildir/new, logs in $run/"
}

stop() {
  # Front first (no new connections), then the instances (they finish their
  # transactions on SIGTERM), then the consumer and the engines.
  for name in haproxy mx1 mx2 mx3 consumer nats redis; do
    local pidfile="$run/$name.pid"
    [ -f "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
  done
  echo "cluster stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
