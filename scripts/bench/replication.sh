#!/usr/bin/env bash
# Same-run comparison of replication modes with `apogee bench produce`
# (1 KiB bodies, 64 async senders), alternating the set-ups each round:
#   single  one broker, ASYNC_MASTER, no slave
#   async   ASYNC_MASTER + one SLAVE
#   sync    SYNC_MASTER + one SLAVE (SEND_OK only once the slave has it)
# Usage: replication.sh SECONDS ROUNDS DIR [extra `bench produce` args]
# Every broker and NameServer runs on loopback with its data under DIR,
# removed after each run. Prints one JSON summary per run, then the median
# msgs/s and p99 per set-up and the ratios to `single`.
set -euo pipefail
secs=${1:?seconds}
rounds=${2:?rounds}
dir=${3:?work directory}
shift 3
here=$(cd "$(dirname "$0")" && pwd)
apogee=${APOGEE:-$here/../../target/release/apogee}
mkdir -p "$dir"
results="$dir/results.txt"
: > "$results"

common=(--set bindAddress=127.0.0.1 --set brokerIP1=127.0.0.1 --set brokerName=bench-ha
        --set diskSpaceWarningLevelRatio=100 --set diskSpaceCleanForciblyRatio=100
        --set diskMaxUsedSpaceRatio=100)

run_one() {
  local setup=$1
  shift
  local base=$((20000 + RANDOM % 20000))
  local ns=$base master_port=$((base + 10)) slave_port=$((base + 20))
  pids=()
  "$apogee" namesrv --listen-port "$ns" --set bindAddress=127.0.0.1 \
    --set kvConfigPath="$dir/kv.json" > "$dir/namesrv.log" 2>&1 &
  pids+=($!)
  local role=ASYNC_MASTER
  [ "$setup" = sync ] && role=SYNC_MASTER
  "$apogee" broker -n 127.0.0.1:$ns --listen-port "$master_port" "${common[@]}" \
    --set brokerRole=$role --set storePathRootDir="$dir/master" > "$dir/master.log" 2>&1 &
  pids+=($!)
  if [ "$setup" != single ]; then
    "$apogee" broker -n 127.0.0.1:$ns --listen-port "$slave_port" "${common[@]}" \
      --set brokerRole=SLAVE --set brokerId=1 --set storePathRootDir="$dir/slave" \
      > "$dir/slave.log" 2>&1 &
    pids+=($!)
  fi
  # The master registers a moment after it starts; the slave learns it then.
  for _ in $(seq 1 60); do
    "$apogee" admin -n 127.0.0.1:$ns updateTopic -c DefaultCluster -t BenchHA -r 8 -w 8 \
      > /dev/null 2>&1 && break
    sleep 0.5
  done
  sleep 4
  local out
  out=$("$apogee" bench produce -n 127.0.0.1:$ns -t BenchHA -s 1024 -w 64 --mode async \
    --duration "$secs" --json "$@" 2>"$dir/bench.err" | tail -1) || true
  echo "$setup $out"
  echo "$setup $out" >> "$results"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir/master" "$dir/slave" "$dir/kv.json"
  sleep 3
}

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

for r in $(seq 1 "$rounds"); do
  for setup in single async sync; do
    run_one "$setup" "$@"
  done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    setup, _, js = line.partition(" ")
    try:
        runs.setdefault(setup, []).append(json.loads(js))
    except ValueError:
        pass
med = {s: (statistics.median(r["tps"] for r in v), statistics.median(r["p99_ms"] for r in v),
           sum(r["failed"] for r in v)) for s, v in runs.items()}
base = med.get("single", (0, 0, 0))[0] or 1
for s in ("single", "async", "sync"):
    if s in med:
        tps, p99, failed = med[s]
        print(f"{s:7s} median {tps:10.0f} msg/s  p99 {p99:7.2f} ms  failed(all runs) {failed}  "
              f"ratio {tps / base:.2f}")
EOF
