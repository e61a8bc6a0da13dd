#!/usr/bin/env bash
# The demo's last act (scripts/demo.sh calls it): a Redis queue on a free port, the node
# daemon with one autoscaled deployment (thaw autoscale run), a burst of tasks pushed at
# once; prints the replicas over time until they are back to zero, then the cold starts.
# Usage: demo_autoscale.sh THAW_BINARY STORE WORKDIR
set -euo pipefail
THAW_BIN=$1 STORE=$2 WORK=$3
AS=$WORK/autoscale
mkdir -p "$AS"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$AS" >"$AS/redis.log" 2>&1 &
REDIS_PID=$!
DAEMON_PID=
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  kill "$REDIS_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

cat >"$AS/autoscale.toml" <<TOML
tick_seconds = 0.5

[[deployment]]
name = "demo"
image = "demo:rootfs"
# Each scale-up also makes the model resident on the node; a replica maps it from the
# deployment's weights socket (bind-mounted into its container).
weights = "demo:weights"
weights_files = ["model.safetensors"]
# Each task: get the resident weights (as a serving process would), then half a second
# of work.
command = ["/bin/sh", "-c", "/usr/local/bin/thaw weights get \"\$THAW_WEIGHTS_IMAGE\" \"\$THAW_WEIGHTS_FILES\" >/dev/null && sleep 0.5"]
policy = "thaw-depth"
max_replicas = 4
concurrency = 1
cold_start_seconds = 2

[deployment.params]
keep_warm = 4
scale_down_delay = 2

[deployment.source]
redis = "redis://127.0.0.1:$PORT"
queue = "demo:work"
TOML
echo "configuration ($AS/autoscale.toml):"
sed -n '/\[\[deployment\]\]/,$p' "$AS/autoscale.toml" | sed 's/^/  /'

export THAW_RUN_DIR=$AS/run
$THAW_BIN --store "$STORE" autoscale run --config "$AS/autoscale.toml" --socket "$AS/thaw.sock" \
  --mount-root "$AS/mnt" --cache "$AS/cache" --state-dir "$AS/state" --ready-file "$AS/ready" \
  --resident-weights 1000000000 2>"$AS/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 1 200); do [ -s "$AS/ready" ] && break; sleep 0.05; done
SERVER=unix:$AS/thaw.sock
status() { "$THAW_BIN" autoscale status --server "$SERVER" --json; }

redis-cli -p "$PORT" lpush demo:work $(seq -f 'task-%g' 1 24) >/dev/null
echo
echo "pushed 24 tasks at t=0; the loop (woken by a keyspace notification) decides at once:"
printf '%6s %8s %8s %6s %7s %10s  %s\n' t desired starting ready queued completed reason
start=$(date +%s.%N)
seen_busy=
for _ in $(seq 1 240); do
  line=$(status | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(d["desired"], d["starting"], d["ready"], d["draining"], d["queued"], d["completed"], d["reason"].replace(" ", "_"))')
  read -r desired starting ready draining queued completed reason <<<"$line"
  t=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
  printf '%6s %8s %8s %6s %7s %10s  %s\n' "${t}s" "$desired" "$starting" "$ready" "$queued" "$completed" "${reason//_/ }"
  [ "$ready" -gt 0 ] && seen_busy=1
  if [ -n "$seen_busy" ] && [ "$completed" -ge 24 ] && [ $((starting + ready + draining)) -eq 0 ]; then break; fi
  sleep 0.5
done
echo
status | python3 -c '
import json, statistics, sys
d = json.load(sys.stdin)[0]
s = sorted(d["start_seconds"])
print("replicas started: %d (peak %d at once); tasks done: %d; requeued: %d" % (d["starts"], d["peak_replicas"], d["completed"], d["requeued"]))
if s:
    print("cold start, decision to a replica taking tasks (lazy mount, runc, worker): median %.3f s, min %.3f s, max %.3f s" % (statistics.median(s), s[0], s[-1]))
'
echo "prewarm jobs that made the weights resident: $("$THAW_BIN" jobs --server "$SERVER" | grep -c 'weights resident' || true); failed tasks: $(redis-cli -p "$PORT" llen demo:work:failed)"
echo "done list holds $(redis-cli -p "$PORT" llen demo:work:done) tasks, $(redis-cli -p "$PORT" lrange demo:work:done 0 -1 | sort -u | wc -l) distinct"
"$THAW_BIN" cache stats --server "$SERVER" | head -5
