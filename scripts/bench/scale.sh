#!/usr/bin/env bash
# Issue 11 scale run: a fresh `apogee standalone` (release build, defaults)
# on random loopback ports with its data in DIR/data, then `apogee bench
# scale` against it with the standalone's pid (CPU, RssAnon, threads).
#   scale.sh TOPICS GROUPS DIR [extra `bench scale` args]
# e.g. scripts/bench/scale.sh 100000 1000 /tmp/scale --produce-secs 0
# SCALE_SET="k=v k=v" adds broker settings (--set). APOGEE picks the binary
# (default: a release build of this checkout); APOGEE_BENCH the one that runs
# the bench client, so two broker builds can be compared with one client.
# Prints the table (or, with --json, the JSON summary) and the load average
# before and after. The whole run is bounded by SCALE_TIMEOUT seconds (default 1800);
# the broker is stopped and its data removed on any exit.
set -euo pipefail
topics=${1:?topics}
groups=${2:?groups}
dir=${3:?work directory}
shift 3
here=$(cd "$(dirname "$0")" && pwd)
apogee=${APOGEE:-$here/../../target/release/apogee}
if [ -z "${APOGEE:-}" ]; then
  (cd "$here/../.." && cargo build --release -p apogee -q)
fi
mkdir -p "$dir/data"
# Below the ephemeral range (32768+), where outgoing connections take ports.
ns=$((12000 + RANDOM % 18000))
start_broker() {
  "$apogee" standalone --set storePathRootDir="$dir/data" --set brokerIP1=127.0.0.1 \
    --set bindAddress=127.0.0.1 --set listenPort=$((ns + 1)) --namesrv-port "$ns" \
    $(for kv in ${SCALE_SET:-}; do printf -- '--set %s ' "$kv"; done) \
    > "$1" 2>&1 &
  broker=$!
  # Wait for the broker to listen (and register) rather than a fixed sleep.
  for _ in $(seq 1 600); do
    grep -q 'apogee broker listening on' "$1" && break
    sleep 0.01
  done
}
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -rf "$dir/data"' EXIT
start_broker "$dir/standalone.log"
sleep 1
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
timeout "${SCALE_TIMEOUT:-1800}" "${APOGEE_BENCH:-$apogee}" bench scale -n 127.0.0.1:$ns -b 127.0.0.1:$((ns + 1)) \
  --broker-pid $broker -t "$topics" -g "$groups" "$@" | tee "$dir/scale.out"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
# Restart (SCALE_RESTART=0 skips): stop the broker gracefully, start it on
# the same data, and time until it listens and until the last topic created
# is routable again (the NameServer restarts with it, so that is the full
# registration of every topic).
if [ "${SCALE_RESTART:-1}" = 1 ]; then
  kill "$broker"; wait "$broker" 2>/dev/null || true
  last=$(printf 'scale-topic-%06d' $((topics - 1)))
  t0=$(date +%s%N)
  start_broker "$dir/standalone-restart.log"
  t1=$(date +%s%N)
  routable=never
  for _ in $(seq 1 3000); do
    if "$apogee" admin topicRoute -n 127.0.0.1:$ns -t "$last" 2>/dev/null | grep -q "$last\|queue"; then
      routable=$(( ($(date +%s%N) - t0) / 1000000 ))ms
      break
    fi
    sleep 0.02
  done
  echo "restart: listening after $(( (t1 - t0) / 1000000 ))ms, $last routable after $routable"
fi
