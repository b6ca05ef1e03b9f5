#!/usr/bin/env bash
# Migration path, shown end to end: an Apogee SLAVE follows an Apache
# RocketMQ 5.3 SYNC_MASTER over the classic HA protocol, then serves its
# messages to a consumer once the Apache master is killed.
#
#   APACHE_LIB=/path/to/rocketmq-5.3.x/jars scripts/ha/apache-master.sh [N] [DIR]
#
# APACHE_LIB is a folder holding the rocketmq-broker jar and its
# dependencies from Maven Central (e.g. what `mvn dependency:copy-dependencies`
# puts out for org.apache.rocketmq:rocketmq-broker:5.3.3; the compatibility
# reference set-up, scripts/reference/run.sh, resolves the same). Everything
# runs on loopback: an Apogee NameServer, the Apache broker (brokerName
# broker-mig, SYNC_MASTER, 64 MiB CommitLog files) and an Apogee broker
# (same brokerName, brokerRole=SLAVE, brokerId=1, same file size). N
# messages (default 20) are sent with `apogee admin sendMessage`; each must
# be SEND_OK, which an Apache SYNC_MASTER only answers once the Apogee slave
# acknowledged it. Then the Apache broker gets SIGKILL and
# `apogee bench consume` must read all N from the Apogee slave. Ends with
# `MIGRATION_RESULT sent=N acked=A consumed=C` and exits non-zero unless
# A = C = N. DIR (default a fresh temp folder) is removed afterwards.
set -euo pipefail
n=${1:-20}
dir=${2:-$(mktemp -d)}
lib=${APACHE_LIB:?set APACHE_LIB to a folder of Apache RocketMQ 5.3.x jars}
here=$(cd "$(dirname "$0")" && pwd)
apogee=${APOGEE:-$here/../../target/release/apogee}
base=$((20000 + RANDOM % 20000))
ns=$base master=$((base + 10)) slave=$((base + 20))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/conf"
wait_port() {
  for _ in $(seq 1 120); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

"$apogee" namesrv --listen-port "$ns" --set bindAddress=127.0.0.1 \
  --set kvConfigPath="$dir/kv.json" > "$dir/namesrv.log" 2>&1 &
pids+=($!)
wait_port "$ns"

cat > "$dir/conf/broker.conf" <<CONF
brokerClusterName=DefaultCluster
brokerName=broker-mig
brokerId=0
brokerRole=SYNC_MASTER
flushDiskType=ASYNC_FLUSH
listenPort=$master
bindAddress=127.0.0.1
brokerIP1=127.0.0.1
brokerIP2=127.0.0.1
namesrvAddr=127.0.0.1:$ns
storePathRootDir=$dir/apache
storePathCommitLog=$dir/apache/commitlog
mappedFileSizeCommitLog=67108864
autoCreateTopicEnable=true
autoCreateSubscriptionGroup=true
diskMaxUsedSpaceRatio=95
CONF
ROCKETMQ_HOME="$dir" java -Xms512m -Xmx512m -XX:MaxDirectMemorySize=512m -XX:+UseG1GC \
  -Duser.home="$dir" -cp "$lib/*" org.apache.rocketmq.broker.BrokerStartup \
  -c "$dir/conf/broker.conf" > "$dir/apache.out" 2>&1 &
apache_pid=$!
pids+=($apache_pid)
wait_port "$master" || { tail -20 "$dir/apache.out"; exit 1; }

"$apogee" broker -n "127.0.0.1:$ns" --listen-port "$slave" --set bindAddress=127.0.0.1 \
  --set brokerIP1=127.0.0.1 --set brokerName=broker-mig --set brokerRole=SLAVE \
  --set brokerId=1 --set mappedFileSizeCommitLog=67108864 \
  --set storePathRootDir="$dir/slave" --set diskSpaceWarningLevelRatio=100 \
  --set diskMaxUsedSpaceRatio=100 --set diskSpaceCleanForciblyRatio=100 \
  > "$dir/slave.log" 2>&1 &
pids+=($!)
wait_port "$slave"
# The Apache broker registers a few seconds after its port opens.
for _ in $(seq 1 60); do
  if "$apogee" admin -n "127.0.0.1:$ns" updateTopic -c DefaultCluster -t MigTopic -r 4 -w 4 \
      > /dev/null 2>&1; then
    break
  fi
  sleep 0.5
done

# Until the slave's link is up the Apache master answers SLAVE_NOT_AVAILABLE.
for _ in $(seq 1 60); do
  if "$apogee" admin -n "127.0.0.1:$ns" sendMessage -t MigTopic -p warm-up 2>/dev/null \
      | grep -q SEND_OK; then
    break
  fi
  sleep 0.5
done
acked=1
for i in $(seq 2 "$n"); do
  if "$apogee" admin -n "127.0.0.1:$ns" sendMessage -t MigTopic -p "from-apache-master-$i" \
      2>/dev/null | grep -q SEND_OK; then
    acked=$((acked + 1))
  fi
done
# The slave copies topic configs from its master every 3 s.
sleep 4
echo "== master's view of its slave"
"$apogee" admin -n "127.0.0.1:$ns" haStatus -b "127.0.0.1:$master" || true
kill -9 "$apache_pid"
sleep 2
out=$(timeout 60 "$apogee" bench consume -n "127.0.0.1:$ns" -t MigTopic -g migration-check \
  --from first --count "$n" --json 2>/dev/null | tail -1 || true)
consumed=$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["received"])
except Exception: print(0)')
echo "MIGRATION_RESULT sent=$n acked=$acked consumed=$consumed"
[ "$acked" -eq "$n" ] && [ "$consumed" -eq "$n" ]
