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
# NETNS=1 (root): the client and NameServer, the master and the slave each
# get a network namespace and address on one bridge (deleted on exit).
# SETUPS="single sync" runs only those set-ups.
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

setups=${SETUPS:-single async sync}
c_ip=127.0.0.1 m_ip=127.0.0.1 s_ip=127.0.0.1
prefix="aporep$$"
in_c=() in_m=() in_s=()
netns_down() {
  for h in c m s sw; do ip netns del "$prefix-$h" 2>/dev/null || true; done
}
if [ -n "${NETNS:-}" ]; then
  ip netns add "$prefix-sw"
  ip -n "$prefix-sw" link add br0 type bridge
  ip -n "$prefix-sw" link set br0 up
  i=2
  for h in c m s; do
    ip netns add "$prefix-$h"
    ip -n "$prefix-sw" link add "h$h" type veth peer name eth0 netns "$prefix-$h"
    ip -n "$prefix-sw" link set "h$h" master br0 up
    ip -n "$prefix-$h" link set lo up
    ip -n "$prefix-$h" addr add "10.98.0.$i/24" dev eth0
    ip -n "$prefix-$h" link set eth0 up
    i=$((i + 1))
  done
  c_ip=10.98.0.2 m_ip=10.98.0.3 s_ip=10.98.0.4
  in_c=(ip netns exec "$prefix-c") in_m=(ip netns exec "$prefix-m") in_s=(ip netns exec "$prefix-s")
fi

common=(--set brokerName=bench-ha
        --set diskSpaceWarningLevelRatio=100 --set diskSpaceCleanForciblyRatio=100
        --set diskMaxUsedSpaceRatio=100)

run_one() {
  local setup=$1
  shift
  local base=$((20000 + RANDOM % 20000))
  local ns=$base master_port=$((base + 10)) slave_port=$((base + 20))
  pids=()
  "${in_c[@]}" "$apogee" namesrv --listen-port "$ns" --set bindAddress=$c_ip \
    --set kvConfigPath="$dir/kv.json" > "$dir/namesrv.log" 2>&1 &
  pids+=($!)
  local role=ASYNC_MASTER
  [ "$setup" = sync ] && role=SYNC_MASTER
  "${in_m[@]}" "$apogee" broker -n $c_ip:$ns --listen-port "$master_port" "${common[@]}" \
    --set bindAddress=$m_ip --set brokerIP1=$m_ip \
    --set brokerRole=$role --set storePathRootDir="$dir/master" > "$dir/master.log" 2>&1 &
  pids+=($!)
  if [ "$setup" != single ]; then
    "${in_s[@]}" "$apogee" broker -n $c_ip:$ns --listen-port "$slave_port" "${common[@]}" \
      --set bindAddress=$s_ip --set brokerIP1=$s_ip \
      --set brokerRole=SLAVE --set brokerId=1 --set storePathRootDir="$dir/slave" \
      > "$dir/slave.log" 2>&1 &
    pids+=($!)
  fi
  # The master registers a moment after it starts; the slave learns it then.
  for _ in $(seq 1 60); do
    "${in_c[@]}" "$apogee" admin -n $c_ip:$ns updateTopic -c DefaultCluster -t BenchHA -r 8 -w 8 \
      > /dev/null 2>&1 && break
    sleep 0.5
  done
  sleep 4
  local out
  out=$("${in_c[@]}" "$apogee" bench produce -n $c_ip:$ns -t BenchHA -s 1024 -w 64 --mode async \
    --duration "$secs" --json "$@" 2>"$dir/bench.err" | tail -1) || true
  echo "$setup $out"
  echo "$setup $out" >> "$results"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir/master" "$dir/slave" "$dir/kv.json"
  sleep 3
}

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; netns_down' EXIT

for r in $(seq 1 "$rounds"); do
  for setup in $setups; do
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
