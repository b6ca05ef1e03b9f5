#!/usr/bin/env bash
# Long mode of the controller-mode failover test
# (crates/cli/tests/failover_controller.rs,
# failover_rounds_lose_no_acknowledged_message): 3 controllers, a NameServer
# and a 2-replica broker set as real processes on loopback, a steady sender,
# and ROUNDS rounds that alternate kill -9 and SIGSTOP (a frozen master that
# later comes back believing it is master) of the current master, each
# followed by the old master's return as a slave. At the end every SEND_OK
# must be readable at the queue and offset it named. Release build.
#
#   scripts/chaos/failover-rounds.sh [ROUNDS]
#
# ROUNDS defaults to 20. Prints each round's failover time (kill to the
# first SEND_OK from the new master) and a summary line
#   FAILOVER_ROUNDS rounds=N acked=… lost=0 duplicates=… failover_ms_p50=… failover_ms_max=…
# and exits non-zero if a message was lost or a failover took over 10 s.
# Partitions and separate hosts: scripts/chaos/failover-netns.sh.
set -euo pipefail
rounds=${1:-20}
limit=${FAILOVER_TIMEOUT:-$((rounds * 40 + 120))}
root=$(cd "$(dirname "$0")/../.." && pwd)
pid=
cleanup() {
  # The test and the processes it started share one process group.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$root"
cargo test --release -p apogee --test failover_controller --no-run
echo "build: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (modified)'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $rounds rounds (at most $limit s)"
log=$(mktemp)
APOGEE_FAILOVER_ROUNDS=$rounds setsid cargo test --release -p apogee --test failover_controller -- \
  --exact failover_rounds_lose_no_acknowledged_message --nocapture > "$log" 2>&1 &
pid=$!
tail -n +1 -f --pid="$pid" "$log" | grep --line-buffered -E '^round [0-9]+[ :]|FAILOVER_ROUNDS|panicked|test result' &
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
if [ "$status" -ne 0 ]; then
  echo "FAILED (exit $status); last lines:" >&2
  tail -n 40 "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
echo "passed"
