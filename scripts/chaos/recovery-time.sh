#!/usr/bin/env bash
# Recovery time of a big store: fills a store of SIZE_GIB GiB with
# `apogee bench produce` against `apogee standalone` (release build,
# loopback, ASYNC_FLUSH), kills the broker with -9 under load, restarts it
# and times from process start until it serves: the broker printed that it
# listens, a send was acknowledged (`admin sendMessage`), and that message
# was pulled back (`admin queryMsgByOffset`, a PULL_MESSAGE). REPS crash restarts (each after
# 5 s more load and another kill -9), then REPS clean restarts (SIGTERM).
#
#   scripts/chaos/recovery-time.sh DIR [SIZE_GIB]
#
# DIR must have room for SIZE_GIB (default 10) plus ~10 %; the data and
# logs (DIR/recovery-data, DIR/recovery-logs) are deleted at exit unless
# KEEP=1. Environment: REPS (3), BODY (1024 bytes), APOGEE (the binary;
# default: target/release/apogee, built first).
# Every restart's `store recovery done` log line is printed with its times.
set -euo pipefail
dir=${1:?usage: $0 DIR [SIZE_GIB]}
gib=${2:-10}
reps=${REPS:-3}
body=${BODY:-1024}
root=$(cd "$(dirname "$0")/../.." && pwd)
apogee=${APOGEE:-$root/target/release/apogee}
if [ -z "${APOGEE:-}" ]; then
  (cd "$root" && cargo build --release -p apogee --bin apogee)
fi
mkdir -p "$dir"
data="$(cd "$dir" && pwd)/recovery-data"
dir="$(cd "$dir" && pwd)/recovery-logs"
rm -rf "$data" "$dir"
mkdir -p "$data" "$dir"
ns=$((20000 + RANDOM % 20000))
port=$((ns + 3)) # its VIP port is listenPort - 2
broker=
producer=
stop() { # pid signal
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill "-$2" "$1" 2>/dev/null || true
    timeout 60 tail --pid="$1" -f /dev/null || kill -KILL "$1" 2>/dev/null || true
  fi
  { wait "$1"; } 2>/dev/null || true
}
cleanup() {
  stop "$producer" TERM
  stop "$broker" KILL
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$data" "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ms() { echo $(((${EPOCHREALTIME/./} - $1) / 1000)); }

# Starts the broker; sets $broker and $t0 (µs).
start_broker() {
  local log=$1
  : > "$log"
  t0=${EPOCHREALTIME/./}
  APOGEE_LOG=${APOGEE_LOG:-info} "$apogee" standalone --namesrv-port "$ns" \
    --set listenPort="$port" --set bindAddress=127.0.0.1 --set brokerIP1=127.0.0.1 \
    --set storePathRootDir="$data" --set diskMaxUsedSpaceRatio=95 > "$log" 2>&1 &
  broker=$!
}

admin() { timeout 10 "$apogee" admin -n "127.0.0.1:$ns" "$@"; }

# Waits until the broker serves; prints "listening send serving" in ms.
wait_serving() {
  local log=$1 listen send out offset deadline=$((SECONDS + 120))
  until grep -q '^apogee broker listening on' "$log"; do
    kill -0 "$broker" 2>/dev/null || { cat "$log" >&2; return 1; }
    [ $SECONDS -lt $deadline ] || { echo "broker not listening after 120 s" >&2; return 1; }
    sleep 0.005
  done
  listen=$(ms "$t0")
  local probe="probe-$t0"
  until out=$(admin --json sendMessage -t RecoveryTopic -b broker-a -i 0 -p "$probe" 2>&1) &&
    grep -q '"SEND_OK"' <<< "$out"; do
    [ $SECONDS -lt $deadline ] || { echo "no send accepted after 120 s: $out" >&2; return 1; }
    sleep 0.005
  done
  send=$(ms "$t0")
  offset=$(grep -oE '"queue_offset": *[0-9]+' <<< "$out" | grep -oE '[0-9]+$')
  until out=$(admin --json queryMsgByOffset -t RecoveryTopic -b broker-a -i 0 -o "$offset" 2>&1) &&
    grep -q -- "$probe" <<< "$out"; do
    [ $SECONDS -lt $deadline ] || { echo "probe not served after 120 s: $out" >&2; return 1; }
    sleep 0.005
  done
  echo "$listen $send $(ms "$t0")"
}

recovery_line() { grep -h 'store recovery done' "$1" | tail -1 | sed 's/\x1b\[[0-9;]*m//g'; }

produce() { # seconds or "" for until stopped
  "$apogee" bench produce -n "127.0.0.1:$ns" -t BenchRecovery -s "$body" -w 64 --mode async \
    --duration "${1:-86400}" > "$dir/produce.log" 2>&1 &
  producer=$!
}

echo "build: $(cd "$root" && git rev-parse --short HEAD), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $(free -g | awk '/Mem:/{print $2 " GiB RAM, " $7 " GiB available"}')"
start_broker "$dir/fill.log"
wait_serving "$dir/fill.log" > /dev/null
admin updateTopic -c DefaultCluster -t BenchRecovery -r 8 -w 8 > /dev/null
target=$((gib << 30))
echo "filling $gib GiB with $body-byte messages"
fill_start=$SECONDS
produce ""
# CommitLog segments are named by their first offset, and the next one is
# made ahead of time: once a segment past SIZE_GIB GiB exists, the one
# starting at SIZE_GIB GiB is being written, so the store holds that much.
until last=$(ls "$data/commitlog" 2>/dev/null | grep -E '^[0-9]+$' | tail -1) && [ -n "$last" ] && [ $((10#$last)) -gt $target ]; do
  kill -0 "$producer" 2>/dev/null || { tail "$dir/produce.log" >&2; exit 1; }
  [ $((SECONDS - fill_start)) -lt 3600 ] || { echo "fill took over an hour" >&2; exit 1; }
  sleep 0.2
done
echo "filled in $((SECONDS - fill_start)) s; kill -9 under load"
kill -KILL "$broker"
{ wait "$broker"; } 2>/dev/null || true
stop "$producer" TERM
producer=
echo "store: $(du -sh --apparent-size "$data" | cut -f1) apparent, $(du -sh "$data" | cut -f1) on disk; $(ls "$data/commitlog" | grep -cE '^[0-9]+$') CommitLog segments"

echo "| restart | listening | send accepted | serving (send + pull) | store recovery log |"
echo "|---|---|---|---|---|"
for i in $(seq 1 "$reps"); do
  start_broker "$dir/crash-$i.log"
  res=$(wait_serving "$dir/crash-$i.log")
  read -r l s v <<< "$res"
  echo "| kill -9 #$i | $l ms | $s ms | $v ms | $(recovery_line "$dir/crash-$i.log") |"
  if [ "$i" -lt "$reps" ]; then
    produce 5
    sleep 4
    kill -KILL "$broker"
    { wait "$broker"; } 2>/dev/null || true
    stop "$producer" TERM
    producer=
  fi
done
for i in $(seq 1 "$reps"); do
  stop "$broker" TERM
  start_broker "$dir/clean-$i.log"
  res=$(wait_serving "$dir/clean-$i.log")
  read -r l s v <<< "$res"
  echo "| clean #$i | $l ms | $s ms | $v ms | $(recovery_line "$dir/clean-$i.log") |"
done
