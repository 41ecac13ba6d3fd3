#!/bin/sh
# Stand-in for the community `launch-cluster.sh` on a head node (tests set cluster_script to
# this file): `launch-cluster.sh [-d] exec <command…>` runs <command> in the cluster container
# `vllm_node` (host network, IPC, privileged, as the real script does), daemonised with -d.
# Only the head is simulated: the container is started through the simulated `docker`.
daemon=""
[ "$1" = "-d" ] && { daemon=1; shift; }
[ "$1" = "exec" ] || { echo "usage: launch-cluster.sh [-d] exec <command...>" >&2; exit 2; }
shift
[ -n "$daemon" ] || { echo "launch-cluster.sh: only -d exec is simulated" >&2; exit 2; }
exec docker run -d --name vllm_node --network host --ipc=host --privileged --gpus all \
  nvcr.io/nvidia/vllm:25.09-py3 "$@"
