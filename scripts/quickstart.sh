#!/usr/bin/env bash
# Builds sdc and runs a three-node cluster on a loop file in a temporary directory:
# format, add three nodes, start them, show status, kill -9 the master, show the failover,
# stop the rest gracefully, clean up. Needs only cargo; no root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p sdc
sdc="$PWD/target/release/sdc"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
disk="$work/cluster.img"

say() { printf '\n== %s\n' "$*"; }
wait_for() { # wait_for DESCRIPTION COMMAND...: poll up to 15 s
  local what=$1; shift
  for _ in $(seq 150); do "$@" && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; return 1
}
master() { "$sdc" status --disk "$disk" --json | python3 -c 'import json,sys; m=json.load(sys.stdin)["master"]; print(m if m is not None else "")'; }
has_master() { [ -n "$(master)" ]; }
master_other_than() { local m; m=$(master); [ -n "$m" ] && [ "$m" != "$1" ]; }

say "format a 64MiB loop file and add three nodes"
"$sdc" format --disk "$disk" --size 64MiB --cluster quickstart --max-nodes 8 2>/dev/null
for i in 1 2 3; do "$sdc" node add --disk "$disk" --node "$i" --name "node$i" --address "127.0.0.$i"; done

say "start three daemons (logs in $work/node*.log)"
for i in 1 2 3; do "$sdc" join --disk "$disk" --node "$i" 2>"$work/node$i.log" & pids+=($!); done
wait_for "a master" has_master
"$sdc" status --disk "$disk"

m=$(master)
say "kill -9 the master, node $m"
kill -9 "${pids[$((m-1))]}"
start=$(date +%s%N)
wait_for "a new master" master_other_than "$m"
echo "new master after $(( ($(date +%s%N) - start) / 1000000 )) ms"
"$sdc" status --disk "$disk"

say "stop the others gracefully (SIGTERM)"
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait
"$sdc" status --disk "$disk"
