"""One launch-command builder for both modes: the argv a recipe means, and the shell line
that runs it on the host.

Every word is a validated catalog value or a constant, and every word is quoted at the sink
(``shellsafe.quote``). The one word the host must expand, the Hugging Face cache under
``$HOME``, is a constant written in double quotes; the pre-flight relies on ``shlex.split`` of
the line giving back exactly the argv.
"""

from __future__ import annotations

import shlex

from app import shellsafe
from app.catalog import Recipe, vllm_flags
from app.config import DEFAULT_CLUSTER_SCRIPT

HF_CACHE_WORD = "$HOME/.cache/huggingface:/root/.cache/huggingface"
"""The cache mount, expanded on the host (so it is the operator's home, not ours)."""
HF_CACHE_SHELL = '"$HOME"/.cache/huggingface:/root/.cache/huggingface'
CONTAINER_PORT = 8000


def model_ref(key: str, recipe: Recipe) -> str:
    """What ``vllm serve`` is given: the repo id, or where a local path is mounted."""
    return recipe.repo if recipe.repo else f"/models/{key}"


def docker_argv(key: str, recipe: Recipe) -> list[str]:
    """One box: ``docker run`` of the recipe's vLLM image on the recipe's port."""
    argv = [
        "docker", "run", "-d", "--name", recipe.container, "--gpus", "all", "--ipc=host",
        "-p", f"{recipe.port}:{CONTAINER_PORT}", "-v", HF_CACHE_WORD,
    ]  # fmt: skip
    if recipe.local_path:
        argv += ["-v", f"{recipe.local_path}:/models/{key}:ro"]
    for name, value in sorted(recipe.env.items()):
        argv += ["-e", f"{name}={value}"]
    argv += [recipe.image, "vllm", "serve", model_ref(key, recipe)]
    argv += ["--host", "0.0.0.0", "--port", str(CONTAINER_PORT), *vllm_flags(recipe)]
    return argv


EXTRA_DOCKER_ARGS = "VLLM_SPARK_EXTRA_DOCKER_ARGS"
"""The community script's variable for more ``docker run`` words (a local model's mount)."""


def cluster_argv(key: str, recipe: Recipe, script: str = DEFAULT_CLUSTER_SCRIPT) -> list[str]:
    """Two boxes: the head node's ``launch-cluster.sh`` in daemon ``exec`` mode (Ray,
    ``--network host`` and the HF cache mount are the script's) with the recipe's image
    (``-t``), container name (``--name``) and environment (``-e``), tensor parallel over the
    boxes. A ``local_path`` model is mounted through the script's extra docker args (the path
    must exist on every box)."""
    argv = []
    if recipe.local_path:
        argv.append(f"{EXTRA_DOCKER_ARGS}=-v {recipe.local_path}:/models/{key}:ro")
    argv += [script, "-t", recipe.image, "--name", recipe.container]
    for name, value in sorted(recipe.env.items()):
        argv += ["-e", f"{name}={value}"]
    argv += ["-d", "exec", "vllm", "serve", model_ref(key, recipe)]
    argv += ["--host", "0.0.0.0", "--port", str(recipe.port)]
    flags = vllm_flags(recipe)
    if "--distributed-executor-backend" not in flags:  # the cluster script's Ray, by default
        flags += ["--distributed-executor-backend", "ray"]
    return argv + flags


def cluster_stop_argv(recipe: Recipe, script: str = DEFAULT_CLUSTER_SCRIPT) -> list[str]:
    """Stop a cluster-mode model: the script's ``stop`` removes the container on every box."""
    return [script, "--name", recipe.container, "stop"]


def build_argv(key: str, recipe: Recipe, cluster_script: str = DEFAULT_CLUSTER_SCRIPT) -> list[str]:
    if recipe.mode == "cluster":
        return cluster_argv(key, recipe, cluster_script)
    return docker_argv(key, recipe)


def render(argv: list[str]) -> str:
    """The shell line: each word quoted, the ``$HOME`` constants left for the host to expand."""
    words = []
    for word in argv:
        if word == HF_CACHE_WORD:
            words.append(HF_CACHE_SHELL)
        elif word == DEFAULT_CLUSTER_SCRIPT:
            words.append('"$HOME"/spark-vllm-docker/launch-cluster.sh')
        elif word.startswith(f"{EXTRA_DOCKER_ARGS}="):  # an assignment: the name unquoted
            words.append(f"{EXTRA_DOCKER_ARGS}={shellsafe.quote(word.split('=', 1)[1])}")
        else:
            words.append(shellsafe.quote(word))
    return " ".join(words)


def round_trips(argv: list[str], line: str) -> bool:
    """The pre-flight's first check: the host's shell will see exactly these words."""
    try:
        return shlex.split(line) == argv
    except ValueError:
        return False
