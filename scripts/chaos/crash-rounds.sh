#!/usr/bin/env bash
# Long mode of the kill -9 test (crates/cli/tests/broker_crash.rs): ROUNDS
# rounds per flush mode on one data folder, each round several producers and
# a consumer group under load, SIGKILL, restart, check; release build.
#
#   scripts/chaos/crash-rounds.sh [ROUNDS] [both|ASYNC_FLUSH|SYNC_FLUSH]
#
# ROUNDS defaults to 100. The load per round is set by the test's variables,
# passed through: APOGEE_CRASH_PRODUCERS (4), APOGEE_CRASH_CONSUMERS (2),
# APOGEE_CRASH_ACKS and APOGEE_CRASH_LOAD_MS (here: kill once 3000 sends
# were acknowledged and 2 s of load passed, both up to 50 % later at
# random; a round then takes about 4 s), APOGEE_CRASH_RATE (here at most
# 2500 sends/s per producer, so both flush modes carry a similar load),
# APOGEE_CRASH_SEED. Each mode is bounded by
# CRASH_TIMEOUT seconds (default 60 per round + 300). Prints the test's
# progress, then one summary line per mode and a table; exits non-zero if a
# mode failed (an acknowledged message lost, a queue with a gap, …).
set -euo pipefail
rounds=${1:-100}
which=${2:-both}
case "$which" in
  both) modes="ASYNC_FLUSH SYNC_FLUSH" ;;
  ASYNC_FLUSH | SYNC_FLUSH) modes=$which ;;
  *) echo "usage: $0 [ROUNDS] [both|ASYNC_FLUSH|SYNC_FLUSH]" >&2; exit 2 ;;
esac
acks=${APOGEE_CRASH_ACKS:-3000}
load_ms=${APOGEE_CRASH_LOAD_MS:-2000}
rate=${APOGEE_CRASH_RATE:-2500}
limit=${CRASH_TIMEOUT:-$((rounds * 60 + 300))}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pid=
cleanup() {
  # The test and the brokers it started share one process group.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$root"
cargo test --release -p apogee --test broker_crash --no-run
echo "build: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (modified)'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

failed=0
for mode in $modes; do
  case $mode in
    ASYNC_FLUSH) test=acknowledged_messages_survive_kill_9_async_flush ;;
    SYNC_FLUSH) test=acknowledged_messages_survive_kill_9_sync_flush ;;
  esac
  log="$work/$mode.log"
  : > "$log"
  echo "== $mode: $rounds rounds (at most $limit s)"
  APOGEE_CRASH_ROUNDS=$rounds APOGEE_CRASH_ACKS=$acks APOGEE_CRASH_LOAD_MS=$load_ms \
    APOGEE_CRASH_RATE=$rate setsid cargo test --release -p apogee --test broker_crash -- \
    --exact "$test" --nocapture --test-threads=1 > "$log" 2>&1 &
  pid=$!
  tail -n +1 -f --pid="$pid" "$log" | grep --line-buffered -E 'round [0-9]+ |CRASH_SUMMARY|panicked|FAILED|test result' &
  start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - start)) -gt "$limit" ]; then
      echo "$mode: over $limit s, stopping it" >&2
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
    echo "$mode: FAILED (exit $status); last lines:" >&2
    tail -n 30 "$log" >&2
    failed=1
  fi
  grep -ho 'CRASH_SUMMARY.*' "$log" >> "$work/summaries" || true
done

echo
echo "| flush | rounds | acknowledged | acknowledged lost | never delivered | stored twice | delivered twice (redeliveries) | recovery p50 | recovery max | send accepted p50 / max |"
echo "|---|---|---|---|---|---|---|---|---|---|"
if [ -f "$work/summaries" ]; then
  while read -r line; do
    declare -A f=()
    for kv in ${line#CRASH_SUMMARY }; do f[${kv%%=*}]=${kv#*=}; done
    echo "| ${f[flush]} | ${f[rounds]} | ${f[acked]} | ${f[acked_lost]} | ${f[never_delivered]} | ${f[stored_twice]} | ${f[delivered_twice]} (${f[redeliveries]}) | ${f[recovery_ms_p50]} ms | ${f[recovery_ms_max]} ms | ${f[send_ms_p50]} / ${f[send_ms_max]} ms |"
    unset f
  done < "$work/summaries"
fi
exit "$failed"
