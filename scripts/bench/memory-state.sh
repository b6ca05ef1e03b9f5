#!/usr/bin/env bash
# Puts the VM's memory into a known state before a benchmark run.
#   memory-state.sh fresh DIR   wait until memory freed by earlier runs has
#                               been handed back to the hypervisor
#   memory-state.sh full DIR    fill the page cache from DIR/fill.bin (created
#                               on first use, 17 GB by default: FILL_MB)
# Why: on a VM with virtio-balloon free page reporting the first write to a
# page the host took back stops the vCPU for a host fault; memory freed a
# moment ago does not. Comparisons (dd against the store, run against run)
# are only fair with both sides in the same state. See docs/BENCHMARKS.md.
set -euo pipefail
state=${1:?fresh|full}
dir=${2:?work directory}
mkdir -p "$dir"
case "$state" in
  fresh)
    rm -f "$dir/fill.bin"
    sync
    sleep "${SETTLE:-40}"
    ;;
  full)
    if [ ! -f "$dir/fill.bin" ]; then
      dd if=/dev/zero of="$dir/fill.bin" bs=1M count="${FILL_MB:-17000}" status=none
    fi
    sync
    cat "$dir/fill.bin" > /dev/null
    sleep 3
    ;;
  *) echo "unknown state $state (fresh|full)" >&2; exit 2 ;;
esac
free -m | awk 'NR==2 { print "free memory: " $4 " MiB" }'
