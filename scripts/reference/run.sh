#!/usr/bin/env bash
# Apache RocketMQ 5.3.x as the oracle: starts its NameServer, Broker and gRPC
# Proxy (cluster mode) from Maven Central artifacts on loopback ports, and runs
# the compatibility suites (compat/java with both remoting clients, mqadmin,
# the gRPC client through the proxy, compat/go) against it.
#
#   scripts/reference/run.sh test     # start, run every suite, stop; one result line per suite
#   scripts/reference/run.sh start    # start only (prints the addresses)
#   scripts/reference/run.sh stop
#
# Environment: REF_DIR (work folder, default /tmp/apogee-reference),
# REF_NAMESRV_PORT (19876), REF_BROKER_PORT (30911; Apache also uses port-2 and
# port+1), REF_PROXY_PORT (18081, gRPC; remoting on port-1), ROCKETMQ_VERSION
# (5.3.3). Heaps are capped for a 2-core machine: NameServer 256 MiB, Broker
# 1 GiB heap + 1 GiB direct memory, Proxy 512 MiB.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REF_DIR="${REF_DIR:-/tmp/apogee-reference}"
NS_PORT="${REF_NAMESRV_PORT:-19876}"
BROKER_PORT="${REF_BROKER_PORT:-30911}"
VERSION="${ROCKETMQ_VERSION:-5.3.3}"
PROXY_PORT="${REF_PROXY_PORT:-18081}"
PROXY_ADDR="127.0.0.1:$PROXY_PORT"
NS_ADDR="127.0.0.1:$NS_PORT"
BROKER_ADDR="127.0.0.1:$BROKER_PORT"

wait_port() { # host port seconds
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.5
  done
}

start() {
  mkdir -p "$REF_DIR/conf" "$REF_DIR/store" "$REF_DIR/namesrv"
  local lib="$HERE/target/lib-$VERSION"
  if [ ! -f "$lib/rocketmq-proxy-$VERSION.jar" ]; then
    echo "== resolving Apache RocketMQ $VERSION (namesrv, broker, proxy) from Maven Central"
    mvn -B -ntp -q -f "$HERE/pom.xml" -Drocketmq.version="$VERSION" \
      dependency:copy-dependencies -DoutputDirectory="$lib"
  fi
  cat >"$REF_DIR/conf/namesrv.conf" <<CONF
listenPort=$NS_PORT
bindAddress=127.0.0.1
kvConfigPath=$REF_DIR/namesrv/kvConfig.json
configStorePath=$REF_DIR/namesrv/namesrv.properties
CONF
  cat >"$REF_DIR/conf/broker.conf" <<CONF
brokerClusterName=DefaultCluster
brokerName=broker-a
brokerId=0
brokerRole=ASYNC_MASTER
flushDiskType=ASYNC_FLUSH
listenPort=$BROKER_PORT
bindAddress=127.0.0.1
brokerIP1=127.0.0.1
namesrvAddr=$NS_ADDR
storePathRootDir=$REF_DIR/store
storePathCommitLog=$REF_DIR/store/commitlog
autoCreateTopicEnable=true
autoCreateSubscriptionGroup=true
diskMaxUsedSpaceRatio=95
# SQL92 subscriptions (compat/java SqlFilterTest); Apache's default is off.
enablePropertyFilter=true
# Transaction check-back within seconds (compat/java TransactionTest). Op
# messages (the decisions) are batched every transactionOpBatchInterval
# (3 s by default): it must stay well below transactionTimeOut, or decided
# half messages are checked — and committed — again.
transactionCheckInterval=1000
transactionTimeOut=3000
transactionOpBatchInterval=200
# RECALL_MESSAGE (compat/java RecallTest, gRPC recall tests); Apache 5.3's
# default is off, Apogee's on.
recallMessageEnable=true
CONF
  local jvm=(-server -XX:+UseG1GC -Duser.home="$REF_DIR" -cp "$lib/*")
  export ROCKETMQ_HOME="$REF_DIR"
  echo "== Apache RocketMQ $VERSION NameServer on $NS_ADDR"
  nohup java -Xms128m -Xmx256m "${jvm[@]}" org.apache.rocketmq.namesrv.NamesrvStartup \
    -c "$REF_DIR/conf/namesrv.conf" >"$REF_DIR/namesrv.out" 2>&1 &
  echo $! >"$REF_DIR/namesrv.pid"
  wait_port 127.0.0.1 "$NS_PORT" 60 || { cat "$REF_DIR/namesrv.out"; echo "NameServer did not start" >&2; exit 1; }
  echo "== Apache RocketMQ $VERSION Broker on $BROKER_ADDR"
  nohup java -Xms1g -Xmx1g -XX:MaxDirectMemorySize=1g "${jvm[@]}" org.apache.rocketmq.broker.BrokerStartup \
    -c "$REF_DIR/conf/broker.conf" >"$REF_DIR/broker.out" 2>&1 &
  echo $! >"$REF_DIR/broker.pid"
  wait_port 127.0.0.1 "$BROKER_PORT" 120 || { cat "$REF_DIR/broker.out"; echo "Broker did not start" >&2; exit 1; }
  # The broker registers itself (and TBW102) with the NameServer shortly after.
  sleep 5
  cat >"$REF_DIR/conf/rmq-proxy.json" <<CONF
{
  "rocketMQClusterName": "DefaultCluster",
  "namesrvAddr": "$NS_ADDR",
  "proxyMode": "cluster",
  "grpcServerPort": $PROXY_PORT,
  "remotingListenPort": $((PROXY_PORT - 1)),
  "minInvisibleTimeMillsForRecv": 1000
}
CONF
  echo "== Apache RocketMQ $VERSION Proxy (cluster mode), gRPC on $PROXY_ADDR"
  # minInvisibleTimeMillsForRecv: the suites hide messages for 2-5 s
  # (Apache's proxy allows 10 s at least by default; Apogee has no minimum).
  nohup java -Xms256m -Xmx512m "${jvm[@]}" org.apache.rocketmq.proxy.ProxyStartup \
    -pc "$REF_DIR/conf/rmq-proxy.json" -pm cluster >"$REF_DIR/proxy.out" 2>&1 &
  echo $! >"$REF_DIR/proxy.pid"
  wait_port 127.0.0.1 "$PROXY_PORT" 120 || { cat "$REF_DIR/proxy.out"; echo "Proxy did not start" >&2; exit 1; }
  echo "namesrv=$NS_ADDR broker=$BROKER_ADDR proxy(grpc)=$PROXY_ADDR (logs under $REF_DIR)"
}

stop() {
  for role in proxy broker namesrv; do
    local f="$REF_DIR/$role.pid"
    if [ -f "$f" ]; then
      local pid
      pid="$(cat "$f")"
      if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 60); do
          kill -0 "$pid" 2>/dev/null || break
          sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
      fi
      rm -f "$f"
    fi
  done
}

suites() {
  local results=() log="$REF_DIR/suite.log" rc
  : >"$log"
  rm -f "$REF_DIR/apache-4.log" "$REF_DIR/apache-5.log" "$REF_DIR/mqadmin.log" "$REF_DIR/grpc.log" "$REF_DIR/go.log"
  for profile in apache-4 apache-5 mqadmin; do
    rc=0
    mvn -B -ntp -f "$ROOT/compat/java/pom.xml" -P"$profile" -Dcompat.namesrv="$NS_ADDR" test 2>&1 | tee -a "$log" "$REF_DIR/$profile.log" || rc=$?
    results+=("apache-$VERSION $profile: $(grep -E '^\[(INFO|WARNING|ERROR)\] Tests run: [0-9]+, Failures: [0-9]+, Errors: [0-9]+, Skipped: [0-9]+$' "$REF_DIR/$profile.log" | tail -1 | sed 's/^\[[A-Z]*\] //') (exit $rc)")
  done
  rc=0
  mvn -B -ntp -f "$ROOT/compat/java/pom.xml" -Pgrpc -Dcompat.namesrv="$NS_ADDR" -Dcompat.grpc="$PROXY_ADDR" test 2>&1 | tee -a "$log" "$REF_DIR/grpc.log" || rc=$?
  results+=("apache-$VERSION proxy grpc (rocketmq-client-java): $(grep -E '^\[(INFO|WARNING|ERROR)\] Tests run: [0-9]+, Failures: [0-9]+, Errors: [0-9]+, Skipped: [0-9]+$' "$REF_DIR/grpc.log" | tail -1 | sed 's/^\[[A-Z]*\] //') (exit $rc)")
  rc=0
  (cd "$ROOT/compat/go" && COMPAT_NAMESRV="$NS_ADDR" COMPAT_BROKER_ADDR="$BROKER_ADDR" go test -count=1 -v ./...) 2>&1 | tee -a "$log" "$REF_DIR/go.log" || rc=$?
  local passed failed
  passed=$(grep -c -- '^--- PASS' "$REF_DIR/go.log" || true)
  failed=$(grep -c -- '^--- FAIL' "$REF_DIR/go.log" || true)
  results+=("apache-$VERSION go: $passed passed, $failed failed (exit $rc)")
  echo "== results against Apache RocketMQ $VERSION"
  printf '%s\n' "${results[@]}"
}

case "${1:-test}" in
  start) start ;;
  stop) stop ;;
  test)
    trap stop EXIT
    stop
    rm -rf "$REF_DIR/store" "$REF_DIR/namesrv"
    start
    suites
    ;;
  *) echo "usage: $0 [test|start|stop]" >&2; exit 2 ;;
esac
