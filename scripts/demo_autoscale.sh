#!/usr/bin/env bash
# The demo's last act (scripts/demo.sh calls it): a Redis queue on a free port, the node
# daemon with one autoscaled deployment (thaw autoscale run), a burst of tasks pushed at
# once; prints the replicas over time and the cold starts; then kills the daemon with
# its replicas warm, starts another that adopts them, pushes a second burst onto them and
# prints the replicas until they are back to zero.
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
# The daemon (started again after a crash below: same state, run and mount directories).
start_daemon() {
  rm -f "$AS/ready"
  $THAW_BIN --store "$STORE" autoscale run --config "$AS/autoscale.toml" --socket "$AS/thaw.sock" \
    --mount-root "$AS/mnt" --cache "$AS/cache" --state-dir "$AS/state" --ready-file "$AS/ready" \
    --resident-weights 1000000000 2>"$AS/$1" &
  DAEMON_PID=$!
  for _ in $(seq 1 200); do [ -s "$AS/ready" ] && break; sleep 0.05; done
}
start_daemon daemon.log
SERVER=unix:$AS/thaw.sock
status() { "$THAW_BIN" autoscale status --server "$SERVER" --json; }
done_tasks() { redis-cli -p "$PORT" llen demo:work:done; }

# Prints the deployment every half second until `done_tasks` reaches $1 and, with
# "to-zero", no replica is left.
watch_until() {
  local want=$1 until=$2 seen_busy= line desired starting ready draining queued completed reason t
  printf '%6s %8s %8s %6s %7s %10s  %s\n' t desired starting ready queued done reason
  for _ in $(seq 1 240); do
    line=$(status | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(d["desired"], d["starting"], d["ready"], d["draining"], d["queued"], d["reason"].replace(" ", "_"))')
    read -r desired starting ready draining queued reason <<<"$line"
    completed=$(done_tasks)
    t=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
    printf '%6s %8s %8s %6s %7s %10s  %s\n' "${t}s" "$desired" "$starting" "$ready" "$queued" "$completed" "${reason//_/ }"
    [ "$ready" -gt 0 ] && seen_busy=1
    if [ -n "$seen_busy" ] && [ "$completed" -ge "$want" ]; then
      [ "$until" = done ] && return
      [ $((starting + ready + draining)) -eq 0 ] && return
    fi
    sleep 0.5
  done
}

redis-cli -p "$PORT" lpush demo:work $(seq -f 'task-%g' 1 24) >/dev/null
echo
echo "pushed 24 tasks at t=0; the loop (woken by a keyspace notification) decides at once:"
start=$(date +%s.%N)
watch_until 24 done
status >"$AS/first.json"
python3 - "$AS/first.json" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))[0]
s = sorted(d["start_seconds"])
print("replicas started: %d (peak %d at once); tasks done: %d; requeued: %d" % (d["starts"], d["peak_replicas"], d["completed"], d["requeued"]))
if s:
    print("cold start, decision to a replica taking tasks (lazy mount, runc, worker): median %.3f s, min %.3f s, max %.3f s" % (statistics.median(s), s[0], s[-1]))
PY
echo "prewarm jobs that made the weights resident: $("$THAW_BIN" jobs --server "$SERVER" | grep -c 'weights resident' || true)"

echo
echo "the daemon crashes (kill -9) while its replicas are warm; a new one starts on the same node:"
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
start_daemon daemon-restarted.log
grep 'adopted' "$AS/daemon-restarted.log" | sed 's/^/  /' || true
status | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print("  replicas adopted: %d, started again: %d (their roots served again by the new daemon, where the old one left off)" % (d["adopted"], d["starts"]))'
redis-cli -p "$PORT" lpush demo:work $(seq -f 'task-%g' 25 32) >/dev/null
echo "pushed 8 more tasks: the adopted replicas take them, then the node scales to zero:"
start=$(date +%s.%N)
watch_until 32 to-zero
echo
echo "failed tasks: $(redis-cli -p "$PORT" llen demo:work:failed); done list holds $(done_tasks) tasks, $(redis-cli -p "$PORT" lrange demo:work:done 0 -1 | sort -u | wc -l) distinct"
"$THAW_BIN" cache stats --server "$SERVER" | head -5
