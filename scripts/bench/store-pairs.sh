#!/usr/bin/env bash
# dd against `apogee bench store` (ASYNC, 1 KiB, 4.2 GB), N pairs, with both
# sides of each pair starting from the same memory state.
#   store-pairs.sh fresh|full N DIR
set -euo pipefail
state=${1:?fresh|full}
n=${2:?pairs}
dir=${3:?work directory}
here=$(cd "$(dirname "$0")" && pwd)
apogee=${APOGEE:-$here/../../target/release/apogee}
for i in $(seq 1 "$n"); do
  "$here/memory-state.sh" "$state" "$dir"
  dd=$(cd "$dir" && dd if=/dev/zero of=ddfile bs=1M count=2048 conv=fdatasync 2>&1 | tail -1)
  rm -f "$dir/ddfile"
  "$here/memory-state.sh" "$state" "$dir"
  store=$(cd "$dir" && "$apogee" bench store -n 3900000 -s 1024 --flush async --json | tail -1)
  echo "$state pair $i dd: $dd"
  echo "$state pair $i store: $store"
done
