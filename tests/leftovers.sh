#!/usr/bin/env bash
# Nothing the test suite starts may outlive it. `snapshot FILE` records the processes of the
# kinds the suite starts (its binaries, the kube node's, the SDK peers, the browser tier's
# Chromium) and the network namespaces present now; `check FILE` fails, naming them, on any that
# appeared since. Zombies are not counted: they hold nothing, and reaping an orphan is init's
# job. It only looks: stopping is each test's job, by the PID it started.
# usage: tests/leftovers.sh snapshot|check FILE
set -euo pipefail
mode=${1:?snapshot or check}
file=${2:?state file}
names='^(civic-sidecar|civic-fakes|civic-operator|mcp-workload|kube-apiserver|kube-controller|kube-scheduler|kubelet|etcd|containerd|containerd-shim|coredns|chromium|chrome_crashpad)$'

state() {
  ps -eo pid=,stat=,comm=,args= | awk -v names="$names" '
    $2 !~ /^Z/ && ($3 ~ names || $0 ~ /tests\/peers\/(py_server\.py|py_client\.py|node_server\.mjs|node_client\.mjs)/) {
      args = ""; for (i = 4; i <= NF && i < 9; i++) args = args " " $i
      print "process " $1 args
    }'
  ip netns list 2>/dev/null | awk '{print "netns " $1}'
}

case "$mode" in
  snapshot) state | sort >"$file" ;;
  check)
    # PIDs and namespaces present at the snapshot are not the suite's.
    new=$(state | sort | comm -13 "$file" - | grep -v " $$ " || true)
    if [ -n "$new" ]; then
      echo "leftovers: the test suite left these running:" >&2
      printf '  %s\n' "$new" >&2
      exit 1
    fi
    echo "leftovers: nothing the suite started is still running"
    ;;
  *) echo "usage: $0 snapshot|check FILE" >&2; exit 2 ;;
esac
