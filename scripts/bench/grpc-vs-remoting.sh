#!/usr/bin/env bash
# Same-run comparison of the RocketMQ 5 gRPC endpoint with remoting (issue 15):
# one release `apogee standalone`, the same client (`apogee bench`), the same
# message size and concurrency, runs alternating remoting and gRPC.
#   grpc-vs-remoting.sh DIR [ROUNDS] [SECONDS] [COUNT]
# Per round: produce (64 senders, sync, 1 KiB) remoting (on a multi- and a
# single-threaded client runtime), gRPC (one, then two HTTP/2 connections); the same
# with 16 messages per request (1,000,000 messages each, to bound the disk
# space a round writes); then three fresh groups drain COUNT messages
# of a prefilled topic: classic pull, POP (receive + one BATCH_ACK_MESSAGE
# per batch; both client runtimes) and gRPC (ReceiveMessage + one
# AckMessage per batch; one and two connections).
# Prints one JSON line per run: kind, protocol, the server's CPU seconds
# during the run, and the bench's summary. With GO_BENCH set to a build of
# compat/go-grpc/bench (`cd compat/go-grpc && go build -o /tmp/gobench
# ./bench`), each round also runs the official Go client (produce, and a
# simple consumer acking each message) as a sanity check.
set -euo pipefail
dir=${1:?work directory}
rounds=${2:-3}
secs=${3:-15}
count=${4:-200000}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
apogee=${APOGEE:-$root/target/release/apogee}
[ -n "${APOGEE:-}" ] || (cd "$root" && cargo build --release -p apogee -q)
mkdir -p "$dir"
ns_port=$((12000 + RANDOM % 18000))
ns=127.0.0.1:$ns_port
grpc=127.0.0.1:$((ns_port + 5))
"$apogee" standalone --namesrv-port "$ns_port" --listen-port $((ns_port + 3)) \
  --set storePathRootDir="$dir/data" --set brokerIP1=127.0.0.1 --set bindAddress=127.0.0.1 \
  --set grpcServerPort=$((ns_port + 5)) \
  --set diskMaxUsedSpaceRatio=95 --set diskSpaceCleanForciblyRatio=95 --set diskSpaceWarningLevelRatio=97 \
  > "$dir/apogee.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir/data"' EXIT
for _ in $(seq 1 100); do grep -q 'apogee grpc listening on' "$dir/apogee.log" && break; sleep 0.1; done
# Same queues for both protocols (the proxy would auto-create 4, remoting 8).
for t in GvrProduce GvrBatch GvrConsume GvrGo; do
  "$apogee" admin updateTopic -n "$ns" -c DefaultCluster -t $t -r 8 -w 8 >/dev/null
done
"$apogee" bench produce -n "$ns" -t GvrConsume -s 1024 -w 64 --mode async \
  --count $((count * rounds * 5 / 2)) --json >/dev/null 2>&1
sleep 2
cpu() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
run() { # kind protocol bench-args...
  local kind=$1 proto=$2; shift 2
  local before after out
  before=$(cpu)
  out=$("$apogee" bench "$@" --json 2>/dev/null | tail -1)
  after=$(cpu)
  echo "{\"kind\":\"$kind\",\"protocol\":\"$proto\",\"server_cpu_s\":$(( (after - before) ))e-2,\"result\":$out}"
}
for r in $(seq 1 "$rounds"); do
  # The gRPC client runs on one thread (--runtime auto); remoting on both
  # kinds, the better one being the figure to beat.
  run produce remoting produce -n "$ns" -t GvrProduce -s 1024 -w 64 --mode sync --duration "$secs"
  run produce remoting-1thread produce -n "$ns" -t GvrProduce -s 1024 -w 64 --mode sync --duration "$secs" --runtime current-thread
  run produce grpc produce -n "$ns" -t GvrProduce -s 1024 -w 64 --mode sync --duration "$secs" --grpc "$grpc"
  run produce grpc-2conn produce -n "$ns" -t GvrProduce -s 1024 -w 64 --mode sync --duration "$secs" --grpc "$grpc" --grpc-connections 2
  run produce-batch16 remoting produce -n "$ns" -t GvrBatch -s 1024 -w 64 --mode sync --batch 16 --count 1000000
  run produce-batch16 grpc produce -n "$ns" -t GvrBatch -s 1024 -w 64 --mode sync --batch 16 --count 1000000 --grpc "$grpc"
  run consume-pull remoting consume -n "$ns" -t GvrConsume -g "GvrPull$r" --count "$count" --duration 120
  run consume-pop remoting consume -n "$ns" -t GvrConsume -g "GvrPop$r" --pop --count "$count" --duration 120
  run consume-pop remoting-1thread consume -n "$ns" -t GvrConsume -g "GvrPop1t$r" --pop --count "$count" --duration 120 --runtime current-thread
  run consume-grpc grpc consume -n "$ns" -t GvrConsume -g "GvrGrpc$r" --grpc "$grpc" --count "$count" --duration 120
  run consume-grpc grpc-2conn consume -n "$ns" -t GvrConsume -g "GvrGrpc2c$r" --grpc "$grpc" --count "$count" --duration 120 --grpc-connections 2
  if [ -n "${GO_BENCH:-}" ]; then
    for mode in produce consume; do
      before=$(cpu)
      out=$("$GO_BENCH" -endpoint "$grpc" -topic GvrGo -group "GvrGo$r" -mode $mode -senders 64 -size 1024 \
        -seconds "$secs" -receivers 4 -count $((count / 4)) 2>/dev/null | tail -1)
      after=$(cpu)
      echo "{\"kind\":\"go-client-$mode\",\"protocol\":\"grpc\",\"server_cpu_s\":$(( (after - before) ))e-2,\"result\":$out}"
    done
  fi
done
