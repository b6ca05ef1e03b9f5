#!/usr/bin/env bash
# One end-to-end run: `apogee standalone` (defaults, ASYNC_FLUSH) on random
# loopback ports with its data in DIR/data, a topic with 8 queues, then
#   e2e.sh produce SECONDS DIR [extra `bench produce` args]
#   e2e.sh both    SECONDS DIR [extra `bench produce` args]  (consume too)
# Prints the JSON summaries and the broker's resident memory; removes the
# data afterwards (run memory-state.sh before the next run).
set -euo pipefail
mode=${1:?produce|both}
secs=${2:?seconds}
dir=${3:?work directory}
shift 3
here=$(cd "$(dirname "$0")" && pwd)
apogee=${APOGEE:-$here/../../target/release/apogee}
mkdir -p "$dir/data"
ns=$((20000 + RANDOM % 20000))
"$apogee" standalone --set storePathRootDir="$dir/data" --set brokerIP1=127.0.0.1 \
  --set listenPort=$((ns + 1)) --namesrv-port "$ns" > "$dir/standalone.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -rf "$dir/data"' EXIT
sleep 1.5
"$apogee" admin -n 127.0.0.1:$ns updateTopic -c DefaultCluster -t BenchE2E -r 8 -w 8 > /dev/null
if [ "$mode" = both ]; then
  "$apogee" bench consume -n 127.0.0.1:$ns -t BenchE2E --from last --duration $((secs + 8)) --json \
    > "$dir/consume.out" 2>&1 &
  consumer=$!
  sleep 4
fi
"$apogee" bench produce -n 127.0.0.1:$ns -t BenchE2E -s 1024 -w 64 --mode async \
  --duration "$secs" --json "$@" > "$dir/produce.out" 2>&1
echo "produce: $(tail -1 "$dir/produce.out")"
if [ "$mode" = both ]; then
  wait $consumer
  echo "consume: $(tail -1 "$dir/consume.out")"
fi
grep -E 'RssAnon' /proc/$broker/status
