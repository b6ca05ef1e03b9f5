#!/usr/bin/env bash
# Controller-mode failover across hosts (crates/cli/tests/failover_netns.rs):
# 3 controllers, a NameServer, a 2-replica broker set and the load client,
# each in its own network namespace with its own address on one bridge.
# ROUNDS rounds cycle through kill -9 of the master, a partition (its link
# to the bridge down) and a controller partition (blackhole routes between
# it and the controllers only; clients still reach it), each healed after
# the failover so the old master rejoins as a slave. Every SEND_OK is
# recorded and must be readable at the queue and offset it named; consumer
# offsets committed before each fault must be on the new master. Release
# build; needs root and `ip netns`.
#
#   sudo scripts/chaos/failover-netns.sh [ROUNDS]
#
# ROUNDS defaults to 20. Prints each round's failover time (fault to the
# first SEND_OK from the new master) and a summary line
#   FAILOVER_NETNS rounds=N acked=… lost=0 duplicates=… stale_master_acks=0 … failover_ms_p50=… failover_ms_max=…
# and exits non-zero if a message was lost, the old master acknowledged a
# send after the new one took over, a round got stuck or a failover took
# over 10 s. The namespaces
# (apofo<pid>-*) are deleted on exit, also on failure or Ctrl-C.
set -euo pipefail
rounds=${1:-20}
limit=${FAILOVER_TIMEOUT:-$((rounds * 60 + 180))}
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "failover-netns: needs root (network namespaces); run it with sudo" >&2
  exit 2
fi
if ! command -v ip >/dev/null 2>&1; then
  echo "failover-netns: the ip command (iproute2) is not installed" >&2
  exit 2
fi
prefix="apofo$$"
pid=
cleanup() {
  # The test and the processes it started share one process group.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  # A killed test cannot delete its namespaces itself.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$prefix-" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$root"
cargo test --release -p apogee --test failover_netns --no-run
echo "build: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (modified)'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $rounds rounds across network namespaces (at most $limit s)"
log=$(mktemp)
APOGEE_FAILOVER_ROUNDS=$rounds APOGEE_NETNS_PREFIX=$prefix setsid \
  cargo test --release -p apogee --test failover_netns -- --nocapture > "$log" 2>&1 &
pid=$!
tail -n +1 -f --pid="$pid" "$log" | grep --line-buffered -E '^round [0-9]+ |FAILOVER_NETNS|panicked|test result' &
start=$SECONDS
while kill -0 "$pid" 2>/dev/null; do
  if [ $((SECONDS - start)) -gt "$limit" ]; then
    echo "over $limit s, stopping it" >&2
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$pid" 2>/dev/null || true
    break
  fi
  sleep 1
done
status=0
wait "$pid" || status=$?
pid=
wait || true
if [ "$status" -ne 0 ] || grep -q "FAILOVER_NETNS skipped" "$log"; then
  echo "FAILED (exit $status); last lines:" >&2
  tail -n 60 "$log" >&2
  rm -f "$log"
  exit 1
fi
max=$(grep -o 'failover_ms_max=[0-9]*' "$log" | tail -1 | cut -d= -f2)
rm -f "$log"
if [ -z "$max" ] || [ "$max" -gt 10000 ]; then
  echo "FAILED: a failover took over 10 s (max ${max:-?} ms)" >&2
  exit 1
fi
echo "passed"
