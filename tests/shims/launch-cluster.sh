#!/bin/sh
# Stand-in for the community `launch-cluster.sh` on a head node (tests set cluster_script to
# this file), with the options spark-control uses:
#   launch-cluster.sh [-t <image>] [--name <container>] [-e VAR=val]... -d exec <command…>
#   launch-cluster.sh [--name <container>] stop
# `exec` runs <command> in the cluster container (host network, IPC, privileged, as the real
# script does), daemonised with -d; $VLLM_SPARK_EXTRA_DOCKER_ARGS adds docker-run words (split
# on spaces, as the real script does). `stop` removes the container (the real one does it on
# every box). Only the head is simulated: the container goes through the simulated `docker`.
image=vllm-node; name=vllm_node; daemon=""; action=start; envs=""
while [ $# -gt 0 ]; do
  case "$1" in
    -t) image="$2"; shift ;;
    --name) name="$2"; shift ;;
    -e|--env) envs="$envs -e $2"; shift ;;
    -d) daemon=1 ;;
    stop) action=stop ;;
    exec) action=exec; shift; break ;;
    *) echo "launch-cluster.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$action" = stop ]; then
  docker stop "$name" >/dev/null 2>&1; docker rm -f "$name" >/dev/null 2>&1; exit 0
fi
[ "$action" = exec ] || { echo "launch-cluster.sh: only exec and stop are simulated" >&2; exit 2; }
[ -n "$daemon" ] || { echo "launch-cluster.sh: only -d exec is simulated" >&2; exit 2; }
# shellcheck disable=SC2086  # word splitting of $envs and the extra args is the contract
exec docker run -d --name "$name" --network host --ipc=host --privileged --gpus all \
  -v "$HOME/.cache/huggingface:/root/.cache/huggingface" $envs $VLLM_SPARK_EXTRA_DOCKER_ARGS \
  "$image" "$@"
