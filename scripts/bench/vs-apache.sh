#!/usr/bin/env bash
# Same-run comparison with Apache RocketMQ (issue 13): the same client
# (`apogee bench`), the same machine, runs alternating Apache, Apogee,
# Apache, Apogee. Apache RocketMQ 5.3.x comes from scripts/reference
# (Maven Central jars, capped heaps); Apogee is a release `apogee standalone`.
#   vs-apache.sh DIR [ROUNDS] [SECONDS]
# Prints one JSON line per run: target, kind, and the bench's summary.
set -euo pipefail
dir=${1:?work directory}
rounds=${2:-2}
secs=${3:-15}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
apogee=${APOGEE:-$root/target/release/apogee}
[ -n "${APOGEE:-}" ] || (cd "$root" && cargo build --release -p apogee -q)
mkdir -p "$dir"
REF_DIR="$dir/apache" "$root/scripts/reference/run.sh" start >/dev/null
ns_apogee=$((12000 + RANDOM % 18000))
"$apogee" standalone --set storePathRootDir="$dir/apogee" --set brokerIP1=127.0.0.1 \
  --set bindAddress=127.0.0.1 --set listenPort=$((ns_apogee + 1)) --namesrv-port "$ns_apogee" \
  > "$dir/apogee.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; REF_DIR="$dir/apache" "$root/scripts/reference/run.sh" stop >/dev/null 2>&1 || true; rm -rf "$dir/apogee" "$dir/apache/store"' EXIT
for _ in $(seq 1 100); do grep -q 'apogee broker listening on' "$dir/apogee.log" && break; sleep 0.1; done
sleep 2
run() { # target namesrv kind args...
  local target=$1 ns=$2 kind=$3; shift 3
  local out
  out=$("$apogee" bench "$@" -n "$ns" --json 2>/dev/null | tail -1)
  echo "{\"target\":\"$target\",\"kind\":\"$kind\",\"result\":$out}"
}
for r in $(seq 1 "$rounds"); do
  for t in apache apogee; do
    if [ $t = apache ]; then ns=127.0.0.1:19876; else ns=127.0.0.1:$ns_apogee; fi
    run $t $ns produce-async produce -t VsAsync -s 1024 -w 64 --mode async --duration "$secs"
    run $t $ns produce-sync produce -t VsSync -s 1024 -w 1 --mode sync --duration "$secs"
    run $t $ns consume consume -t VsAsync -g "VsGroup$r" --from first --duration "$secs"
  done
done
