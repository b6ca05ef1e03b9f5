#!/usr/bin/env bash
# Replication lag under load: a NameServer, an ASYNC_MASTER and a SLAVE on
# loopback, `apogee bench produce` (1 KiB, 64 async senders) for SECONDS
# while haStatus is sampled every ~50 ms; the lag of a sample is the
# master's CommitLog end minus the slave's acknowledged offset, in bytes,
# turned into milliseconds at the run's average write rate.
# Usage: replication-lag.sh SECONDS DIR
set -euo pipefail
secs=${1:?seconds}
dir=${2:?work directory}
here=$(cd "$(dirname "$0")" && pwd)
B=${APOGEE:-$here/../../target/release/apogee}
rm -rf "$dir" && mkdir -p "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$B" namesrv --listen-port 59876 --set bindAddress=127.0.0.1 --set "kvConfigPath=$dir/kv.json" >"$dir/ns.log" 2>&1 & pids+=($!)
sleep 1
"$B" broker -n 127.0.0.1:59876 --listen-port 59911 --set bindAddress=127.0.0.1 --set brokerIP1=127.0.0.1 \
  --set "storePathRootDir=$dir/m" --set brokerRole=ASYNC_MASTER --set grpcServerPort=58081 >"$dir/m.log" 2>&1 & pids+=($!)
sleep 2
"$B" broker -n 127.0.0.1:59876 --listen-port 59921 --set bindAddress=127.0.0.1 --set brokerIP1=127.0.0.1 \
  --set "storePathRootDir=$dir/s" --set brokerRole=SLAVE --set brokerId=1 --set grpcServerPort=58082 >"$dir/s.log" 2>&1 & pids+=($!)
sleep 6
python3 - "$B" "$((secs + 1))" "$dir/samples.json" <<'PY' & sampler=$!
import json, subprocess, sys, time
b, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
samples, end = [], time.time() + secs
while time.time() < end:
    t = time.time()
    try:
        r = subprocess.run([b, "admin", "haStatus", "-n", "127.0.0.1:59876", "-b", "127.0.0.1:59911", "--json"],
                           capture_output=True, text=True, timeout=5)
        d = json.loads(r.stdout)["127.0.0.1:59911"]
        c = d["haConnectionInfo"][0]
        samples.append((t, d["masterCommitLogMaxOffset"], c["slaveAckOffset"]))
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
        pass
    time.sleep(0.05)
json.dump(samples, open(out, "w"))
PY
sleep 0.5
"$B" bench produce -n 127.0.0.1:59876 -t LagTopic -s 1024 -w 64 --mode async --duration "$secs" | tail -3
wait "$sampler"
python3 - "$dir/samples.json" <<'PY'
import json, sys
s = [x for x in json.load(open(sys.argv[1])) if x[1] > 0]
if len(s) < 3:
    sys.exit("too few samples")
rate = (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])
ms = sorted(max(0, m - a) / rate * 1000 for _, m, a in s)
pct = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
print(f"replication lag: {len(s)} samples, write rate {rate / 1e6:.1f} MB/s, "
      f"p50 {pct(0.5):.2f} ms, p99 {pct(0.99):.2f} ms, max {ms[-1]:.2f} ms")
PY
