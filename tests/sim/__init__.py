"""A simulated DGX Spark host: ``docker``, ``nvidia-smi`` and ``hf`` that start real stub servers.

Pieces
------
``tests/shims/{docker,nvidia-smi,hf}``
    POSIX sh, first on the test host's PATH. Each records its call, then answers the cheap
    read-only calls itself with shell builtins (``docker ps [-a] --format '{{json .}}'``,
    ``docker version|info``, ``nvidia-smi``) and hands the rest to ``dockersim.py``, run with
    ``$SPARK_SIM_PYTHON`` (set by tests/servers.py to the test interpreter), else ``python3``.
``tests/sim/shlib.sh``
    The shims' shared recorder (JSON-escapes argv with builtins only).
``tests/sim/dockersim.py``
    ``docker run start stop restart kill rm ps logs inspect exec wait pull login`` and
    ``hf download | auth whoami | version``. A container is a detached supervisor (``_shim``,
    in its own session, so it outlives the SSH session) whose child is the main process.
``tests/sim/stub_vllm.py``
    The main process of a ``vllm serve`` container: vLLM-like start-up lines over
    ``start_delay_s``, then an OpenAI-compatible server (``/health``, ``/v1/models``,
    ``/v1/chat/completions``, ``/v1/completions``, streaming as SSE ending ``data: [DONE]``).

State (``$SPARK_SIM_DIR``, default ``/tmp/spark-sim-<uid>``)
------------------------------------------------------------
``commands.log``
    One JSON line per docker / nvidia-smi / hf call: ``{"argv": [tool, *args], "ts": epoch}``,
    argv exactly as the program received it. Environment values (HF_TOKEN) are never written.
    ``ts``: boot time + /proc/uptime in the shims (10 ms; up to 1 s early until the first
    docker verb run by dockersim.py refines the boot time).
``containers.jsonl``
    The ``docker ps --format '{{json .}}'`` rows, newest first. Rows written by the simulator
    end with ``"State","Status","Ports"``, recomputed on every read from the container's
    ``state`` file; other rows (``add_container`` in tests/servers.py) are shown as written,
    and become "real" (stoppable, startable) the first time a verb changes them.
``containers/<ID>/``
    ``config.json`` (the parsed ``docker run``, with its full argv in ``run_argv``), ``log``
    (what ``docker logs`` prints), ``pid`` (main process), ``state``
    (``running <started> <supervisor pid>`` | ``exited <code> <finished> <started>`` | ...).
    A supervisor that died (host killed) makes the container read ``Exited (137)``.
``sim.json``
    Knobs, read at each container start and each ``hf`` call (``sim_config()`` writes it).
``hf-cache/hub/models--<owner>--<name>/``
    What ``hf download`` writes: ``refs/main``, ``blobs/``, ``snapshots/<commit>/`` with
    ``config.json``, ``generation_config.json``, ``tokenizer_config.json`` and
    ``model.safetensors`` (symlinks to blobs, as huggingface_hub lays out a cache). A cancelled
    download leaves ``blobs/<etag>.incomplete`` and the next one resumes it.
``docker_delay`` / ``gpu.env``
    As before: a ``sleep`` before every docker call; nvidia-smi values (GPU_NAME, GPU_UTIL,
    GPU_TEMP, GPU_POWER, and GPU_MEM_TOTAL / GPU_MEM_USED in MiB for a discrete GPU).

Knobs (``sim.json``)
--------------------
==================  ===================  =======================================================
start_delay_s       1.0                  ``docker run`` → ``Application startup complete.``
fail_mode           "none"               ``crash``: exits 1 half-way (``Exited (1)``);
                                         ``wedge``: becomes ready, then logs
                                         ``CUBLAS_STATUS_EXECUTION_FAILED`` / EngineDeadError
                                         and answers 500 (``/health`` too); ``hang``: never
                                         ready, port never opens, stays ``Up``
fail_models         []                   fail only these models (repo or served name)
fail_starts         null                 fail only the next N starts, then start healthy
wedge_after_s       0.0                  wedge: seconds between ready and the error
mem_total_bytes     128 GiB              unified memory for the start-up arithmetic: KV cache =
                                         total x --gpu-memory-utilization - weights - 1.5 GiB;
                                         ≤ 0, or too small for --max-model-len, fails start-up
                                         as vLLM does (the probe reads the real /proc/meminfo;
                                         nvidia-smi keeps [N/A] as on a Spark)
model_bytes         guessed              weights size (default from the name: ``…-8B`` x 2 B,
                                         FP8 x 1, FP4/AWQ/GPTQ x 0.5)
reply               "Hello from the …"   the fixed reply, one token per word
token_delay_s       0.0                  pause between streamed chunks
stop_delay_s        0.0                  the stub's shutdown time after SIGTERM
bind_host           "127.0.0.1"          where stub servers listen
download_bytes      8 MiB                size of the downloaded model.safetensors
download_seconds    1.0                  how long writing it takes
hf_config           {}                   fields merged into the downloaded config.json
hf_missing_repos    []                   ``hf download`` answers 404 (exit 1)
hf_gated_repos      []                   need HF_TOKEN (env) or --token, else 401 (exit 1)
vllm_extra_flags    []                   ``docker run --rm <image> vllm serve --help=all`` prints
                                         app/vllm_flags.txt plus these (no container is made)
registry_key_sha256 []                   ``docker login -u U --password-stdin`` accepts a password
                                         whose SHA-256 is listed (the password is never stored);
                                         a success is recorded in ``logins.json`` {server: user}
==================  ===================  =======================================================

Ports: ``-p H:C`` publishes the stub on ``bind_host:H`` when C is vLLM's ``--port`` (default
8000); with ``--network host`` it listens on ``--port`` itself. ``--restart always |
unless-stopped | on-failure[:N]`` restart the main process with docker's back-off.

From tests (tests/servers.py)
-----------------------------
``host.sim_config(start_delay_s=0.3, fail_mode="crash")``, ``host.commands("docker")``,
``host.container_log("vllm_node")``, ``host.hf_cache``, ``host.sim_processes()``; ``stop()`` and
``kill()`` of a test host also end its simulated containers. See tests/integration/
test_simulator.py for the whole lifecycle over SSH.

By hand
-------
::

    eval "$(python tests/sim/dockersim.py env /tmp/sim)"     # PATH, SPARK_SIM_DIR, ...
    echo '{"start_delay_s": 3}' > /tmp/sim/sim.json
    docker run -d --name vllm_node --gpus all --ipc=host -p 8888:8000 \\
        nvcr.io/nvidia/vllm:25.09-py3 vllm serve Qwen/Qwen3-8B --served-model-name qwen3
    docker logs -f vllm_node        # ... INFO:     Application startup complete.  (Ctrl-C)
    curl -s localhost:8888/v1/chat/completions -d '{"model":"qwen3","messages":[]}'
    hf download Qwen/Qwen3-8B; cat /tmp/sim/commands.log
    python tests/sim/dockersim.py down /tmp/sim              # kill every container

or only the server: ``python tests/sim/stub_vllm.py --port 8000 --model X --delay 1``.

Limitations
-----------
No isolation: ``docker exec`` runs its command on the host itself (the container's port is not
remapped), and a non-vLLM container runs only harmless commands (nvidia-smi, echo, true, sleep,
...) for real; anything else is an idle process answering 200 on its published port.
``docker logs`` ignores ``--since/--until/-t``; Go templates support ``{{.A.B}}`` and
``{{json .X}}`` only. No images, networks, volumes or ``docker stats``. Pid reuse after a
host kill could make a dead container look alive (checked by /proc/<pid> only).
"""
