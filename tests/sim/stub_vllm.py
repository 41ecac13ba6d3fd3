#!/usr/bin/env python3
"""A tiny OpenAI-compatible stand-in for ``vllm serve`` (standard library only).

It prints vLLM-like start-up lines over ``--delay`` seconds, binds its port only when the
"engine" is ready, then prints ``INFO:     Application startup complete.`` and answers:

    GET  /health                 200 when ready (500 once wedged)
    GET  /v1/models              the served model name(s)
    GET  /version, /metrics      vLLM's version; a few Prometheus gauges
    POST /v1/chat/completions    JSON with usage, or ``"stream": true`` as SSE chunks
    POST /v1/completions           ending ``data: [DONE]``
    POST /v1/embeddings, /v1/rerank, /v1/audio/transcriptions, /v1/audio/speech (as the
         embeddings and speech services answer; ``wedge`` makes the speech routes 500)

Replies are deterministic: the words of ``--reply`` (one "token" per word), cut at
``max_tokens``. Failure modes (``--fail-mode``): ``crash`` exits 1 half-way through start-up,
``wedge`` starts, then logs a CUDA error and answers 500, ``hang`` never becomes ready.
Memory: the KV cache gets ``mem_total x --gpu-memory-utilization - model weights``; when that
is not positive, or too small for ``--max-model-len``, start-up fails as vLLM's does.

By hand::

    python tests/sim/stub_vllm.py --port 8000 --model org/Model-8B --delay 1
    curl -s localhost:8000/v1/chat/completions -d '{"model":"org/Model-8B","messages":[]}'

``tests/sim/dockersim.py`` starts it as the main process of a simulated ``vllm serve``
container, with its output appended to the container's log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.10.2"
GIB = 1024**3
ENGINE = "(EngineCore_DP0 pid=283)"
DEFAULT_REPLY = "Hello from the spark-control simulator."
WEDGE_LINES = (
    "ERROR {ts} [core.py:710] EngineCore encountered a fatal error.",
    "ERROR {ts} [core.py:710] RuntimeError: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when "
    "calling `cublasGemmEx( handle, opa, opb, m, n, k, &falpha, a, CUDA_R_16BF, lda, b, "
    "CUDA_R_16BF, ldb, &fbeta, c, CUDA_R_16BF, ldc, CUDA_R_32F, CUBLAS_GEMM_DEFAULT_TENSOR_OP)`",
    "ERROR {ts} [async_llm.py:480] AsyncLLM output_handler failed.",
    "ERROR {ts} [async_llm.py:480] vllm.v1.engine.exceptions.EngineDeadError: EngineCore "
    "encountered an issue. See stack trace (above) for the root cause.",
)
CRASH_LINES = (
    "ERROR {ts} [core.py:718] EngineCore failed to start.",
    "ERROR {ts} [core.py:718] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
    "2.00 GiB. GPU 0 has a total capacity of 119.70 GiB of which 1.10 GiB is free.",
    "RuntimeError: Engine core initialization failed. See root cause above. "
    "Failed core proc(s): {}",
)


def _ts() -> str:
    return time.strftime("%m-%d %H:%M:%S")


def model_bytes_guess(model: str) -> int:
    """Weights size from a model name: ``…-8B`` → 8e9 parameters x bytes per parameter."""
    m = re.search(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z])", model.rsplit("/", 1)[-1])
    params = float(m.group(1)) * 1e9 if m else 8e9
    name = model.lower()
    if re.search(r"nvfp4|fp4|awq|gptq|int4|4bit|mxfp4", name):
        per = 0.5
    elif re.search(r"fp8|int8|8bit", name):
        per = 1.0
    else:
        per = 2.0
    return int(params * per)


class Stub:
    """The simulated engine: start-up script, readiness, wedge state, replies."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.names: list[str] = a.served_model_name or [a.model]
        self.ready = threading.Event()
        self.wedged = False
        self.running = 0
        self.served = 0
        self.out_lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.created = int(time.time())

    # --- output -------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        with self.out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def api(self, level: str, where: str, msg: str) -> None:
        self.log(f"(APIServer pid=1) {level} {_ts()} [{where}] {msg}")

    def engine(self, level: str, where: str, msg: str) -> None:
        self.log(f"{ENGINE} {level} {_ts()} [{where}] {msg}")

    def fail(self, lines: tuple[str, ...] | list[str], code: int = 1) -> None:
        for line in lines:
            self.log(line.replace("{ts}", _ts()))
        sys.stdout.flush()
        os._exit(code)

    # --- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        a = self.a
        steps = 10
        pause = max(a.delay, 0.0) / steps
        mem_total = a.mem_total_bytes
        weights = a.model_bytes or model_bytes_guess(a.model)
        kv = mem_total * a.gpu_memory_utilization - weights - 1.5 * GIB
        per_token = 128 * 1024  # 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes
        kv_tokens = int(max(kv, 0) // per_token)

        self.log(f"INFO {_ts()} [__init__.py:216] Automatically detected platform cuda.")
        self.api("INFO", "api_server.py:1896", f"vLLM API server version {VERSION}")
        nondefault = {"model": a.model, "port": a.container_port}
        if a.served_model_name:
            nondefault["served_model_name"] = a.served_model_name
        if a.max_model_len:
            nondefault["max_model_len"] = a.max_model_len
        nondefault["gpu_memory_utilization"] = a.gpu_memory_utilization
        self.api("INFO", "utils.py:328", f"non-default args: {nondefault!r}")
        time.sleep(pause)
        self.api("INFO", "model.py:547", "Resolved architecture: LlamaForCausalLM")
        self.api("INFO", "model.py:1510", f"Using max model len {a.max_model_len or 131072}")
        time.sleep(pause)
        self.engine("INFO", "core.py:654", "Waiting for init message from front-end.")
        self.engine(
            "INFO",
            "core.py:76",
            f"Initializing a V1 LLM engine (v{VERSION}) with config: "
            f"model={a.model!r}, served_model_name={self.names[0]}",
        )
        time.sleep(pause)
        self.engine("INFO", "gpu_model_runner.py:2338", f"Starting to load model {a.model}...")
        time.sleep(pause)
        if a.fail_mode == "crash":
            self.fail(list(a.crash_line or []) + list(CRASH_LINES))
        self.log(f"{ENGINE} Loading safetensors checkpoint shards:   0% Completed | 0/4")
        if a.fail_mode == "hang":
            while True:  # stuck loading, as a host short of memory would be
                time.sleep(3600)
        for i in (1, 2, 3, 4):
            time.sleep(pause / 2)
            self.log(
                f"{ENGINE} Loading safetensors checkpoint shards: {i * 25:3d}% Completed | {i}/4"
            )
        load_s = max(a.delay * 0.4, 0.01)
        self.engine("INFO", "default_loader.py:268", f"Loading weights took {load_s:.2f} seconds")
        self.engine(
            "INFO",
            "gpu_model_runner.py:2392",
            f"Model loading took {weights / GIB:.4f} GiB and {load_s + 0.1:.6f} seconds",
        )
        time.sleep(pause)
        if kv <= 0:
            self.fail(
                [
                    "ERROR {ts} [core.py:718] EngineCore failed to start.",
                    "ERROR {ts} [core.py:718] ValueError: No available memory for the cache "
                    "blocks. Try increasing `gpu_memory_utilization` when initializing the engine.",
                    "RuntimeError: Engine core initialization failed. See root cause above.",
                ]
            )
        self.engine("INFO", "gpu_worker.py:298", f"Available KV cache memory: {kv / GIB:.2f} GiB")
        if a.max_model_len and a.max_model_len > kv_tokens:
            need = a.max_model_len * per_token / GIB
            self.fail(
                [
                    "ERROR {ts} [core.py:718] EngineCore failed to start.",
                    "ERROR {ts} [core.py:718] ValueError: To serve at least one request with "
                    f"the models's max seq len ({a.max_model_len}), ({need:.2f} GiB KV cache is "
                    "needed, which is larger than the available KV cache memory "
                    f"({kv / GIB:.2f} GiB). Try "
                    "increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
                    "initializing the engine.",
                    "RuntimeError: Engine core initialization failed. See root cause above.",
                ]
            )
        self.engine("INFO", "kv_cache_utils.py:864", f"GPU KV cache size: {kv_tokens:,} tokens")
        mml = a.max_model_len or 131072
        self.engine(
            "INFO",
            "kv_cache_utils.py:868",
            f"Maximum concurrency for {mml:,} tokens per request: {kv_tokens / mml:.2f}x",
        )
        time.sleep(pause)
        self.engine(
            "INFO",
            "core.py:218",
            f"init engine (profile, create kv cache, warmup model) took {a.delay:.2f} seconds",
        )
        self.api("INFO", "api_server.py:1634", "Supported_tasks: ['generate']")
        self.bind()
        host = "0.0.0.0" if a.listen else a.host  # what vLLM prints inside its container
        self.api(
            "INFO",
            "api_server.py:1912",
            f"Starting vLLM API server 0 on http://{host}:{a.container_port}",
        )
        for route in ("/health", "/v1/models", "/v1/chat/completions", "/v1/completions"):
            method = "GET" if route in ("/health", "/v1/models") else "POST"
            self.api("INFO", "launcher.py:44", f"Route: {route}, Methods: {method}")
        self.log("(APIServer pid=1) INFO:     Started server process [1]")
        self.log("(APIServer pid=1) INFO:     Waiting for application startup.")
        self.ready.set()
        self.log("(APIServer pid=1) INFO:     Application startup complete.")
        if a.fail_mode == "wedge":
            time.sleep(max(a.wedge_after, 0.0))
            self.wedged = True
            self.fail_lines_no_exit(list(a.wedge_line or []) + list(WEDGE_LINES))

    def fail_lines_no_exit(self, lines: list[str]) -> None:
        for line in lines:
            self.log(line.replace("{ts}", _ts()))

    def bind(self) -> None:
        if not self.a.listen:
            return
        stub = self

        class Handler(_Handler):
            pass

        Handler.stub = stub
        try:
            self.server = ThreadingHTTPServer((self.a.host, self.a.port), Handler)
        except OSError as exc:
            self.fail(
                [
                    "ERROR {ts} [api_server.py:1912] Failed to start the API server.",
                    f"OSError: [Errno {exc.errno}] {exc.strerror}",
                ]
            )
        assert self.server is not None
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # --- replies ------------------------------------------------------------------------------
    def tokens(self, max_tokens: Any) -> tuple[list[str], str]:
        words = self.a.reply.split(" ")
        toks = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if isinstance(max_tokens, int) and 0 <= max_tokens < len(toks):
            return toks[:max_tokens], "length"
        return toks, "stop"


def _count(value: Any) -> int:
    """A rough prompt token count: words in every string inside ``value``."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count(v) for v in value)
    if isinstance(value, dict):
        return sum(_count(v) for k, v in value.items() if k in ("content", "text"))
    return 0


class _Handler(BaseHTTPRequestHandler):
    stub: Stub
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _access(self, code: int) -> None:
        if self.stub.a.access_log:
            phrase = self.responses.get(code, ("",))[0]
            self.stub.log(
                f"(APIServer pid=1) INFO:     {self.client_address[0]}:{self.client_address[1]}"
                f' - "{self.command} {self.path} HTTP/1.1" {code} {phrase}'
            )

    def _send(self, code: int, body: Any = None, ctype: str = "application/json") -> None:
        data = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._access(code)

    def _error(self, code: int, message: str, kind: str) -> None:
        self._send(
            code, {"object": "error", "message": message, "type": kind, "param": None, "code": code}
        )

    def _authorized(self) -> bool:
        key = self.stub.a.api_key
        if key and self.headers.get("authorization") != f"Bearer {key}":
            self._send(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self) -> None:
        s = self.stub
        path = self.path.split("?", 1)[0]
        if s.a.generic is not None:
            self._send(200, {"status": "ok"})
            return
        if path == "/health":
            self._send(500 if s.wedged else 200)
        elif path == "/version":
            self._send(200, {"version": VERSION})
        elif path == "/metrics":
            text = (
                f'vllm:num_requests_running{{model_name="{s.names[0]}"}} {s.running}\n'
                f'vllm:request_success_total{{model_name="{s.names[0]}"}} {s.served}\n'
            )
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        elif path == "/v1/models":
            if not self._authorized():
                return
            mml = s.a.max_model_len or 131072
            data = [
                {
                    "id": n,
                    "object": "model",
                    "created": s.created,
                    "owned_by": "vllm",
                    "root": s.a.model,
                    "parent": None,
                    "max_model_len": mml,
                }
                for n in s.names
            ]
            self._send(200, {"object": "list", "data": data})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        s = self.stub
        path = self.path.split("?", 1)[0]
        if s.a.generic is not None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self._send(200, {})
            return
        if path in EXTRA_ROUTES:
            EXTRA_ROUTES[path](self)
            return
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(404, {"detail": "Not Found"})
            return
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self._authorized():
            return
        try:
            req = json.loads(raw or b"{}")
            assert isinstance(req, dict)
        except (ValueError, AssertionError):
            self._error(400, "Invalid JSON body", "BadRequestError")
            return
        chat = path == "/v1/chat/completions"
        model = req.get("model", s.names[0])
        if model not in s.names:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        if chat and not isinstance(req.get("messages"), list):
            self._error(400, "messages: Field required", "BadRequestError")
            return
        if not chat and "prompt" not in req:
            self._error(400, "prompt: Field required", "BadRequestError")
            return
        if s.wedged:
            self._error(
                500,
                "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                "InternalServerError",
            )
            return
        s.running += 1
        try:
            self._complete(req, chat, model)
        finally:
            s.running -= 1
            s.served += 1

    def _complete(self, req: dict[str, Any], chat: bool, model: str) -> None:
        s = self.stub
        toks, finish = s.tokens(req.get("max_tokens", req.get("max_completion_tokens")))
        prompt_tokens = _count(req.get("messages") if chat else req.get("prompt"))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(toks),
            "total_tokens": prompt_tokens + len(toks),
        }
        rid = ("chatcmpl-" if chat else "cmpl-") + os.urandom(8).hex()
        obj = "chat.completion" if chat else "text_completion"
        base = {"id": rid, "object": obj, "created": int(time.time()), "model": model}
        if not req.get("stream"):
            if chat:
                msg = {"role": "assistant", "content": "".join(toks), "tool_calls": []}
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": msg,
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {
                    "index": 0,
                    "text": "".join(toks),
                    "logprobs": None,
                    "finish_reason": finish,
                }
            self._send(200, {**base, "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        base["object"] = "chat.completion.chunk" if chat else "text_completion"

        def event(payload: Any) -> None:
            data = (
                b"data: "
                + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
                + b"\n\n"
            )
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def choice(text: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if text is not None:
                    delta["content"] = text
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}

        try:
            if chat:
                event({**base, "choices": [choice(None, None, role=True)]})
            for i, tok in enumerate(toks):
                if s.a.token_delay:
                    time.sleep(s.a.token_delay)
                last = i == len(toks) - 1
                event({**base, "choices": [choice(tok, finish if last else None)]})
            if not toks:
                event({**base, "choices": [choice("", finish)]})
            if (req.get("stream_options") or {}).get("include_usage"):
                event({**base, "choices": [], "usage": usage})
            event(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        self._access(200)


def _read_body(h: _Handler) -> bytes:
    """The request body, Content-Length or chunked."""
    if h.headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                h.rfile.readline()
                return bytes(out)
            out += h.rfile.read(size)
            h.rfile.readline()
    length = int(h.headers.get("content-length") or 0)
    return h.rfile.read(length) if length else b""


def _embeddings(h: _Handler) -> None:
    """``{input}`` → an OpenAI list of 4-dimensional vectors (deterministic)."""
    req = json.loads(_read_body(h) or b"{}")
    items = req.get("input")
    items = items if isinstance(items, list) else [items]
    data = [
        {"object": "embedding", "index": i, "embedding": [len(str(x)) / 10, i, 0.5, 1.0]}
        for i, x in enumerate(items)
    ]
    usage = {"prompt_tokens": _count(items), "total_tokens": _count(items)}
    model = req.get("model") or h.stub.names[0]
    h._send(200, {"object": "list", "data": data, "model": model, "usage": usage})


def _rerank(h: _Handler) -> None:
    """``{query, documents, top_n}`` → results by shared words with the query."""
    req = json.loads(_read_body(h) or b"{}")
    query = set(str(req.get("query", "")).lower().split())
    docs = [str(d) for d in req.get("documents") or []]
    scored = [
        {"index": i, "relevance_score": len(query & set(d.lower().split())) / (len(query) or 1)}
        for i, d in enumerate(docs)
    ]
    scored.sort(key=lambda r: -r["relevance_score"])
    h._send(200, {"results": scored[: req.get("top_n") or len(scored)]})


def _transcriptions(h: _Handler) -> None:
    """A multipart upload read as it arrives: the reply names the bytes received."""
    if h.stub.a.fail_mode == "wedge" and h.stub.wedged:
        h._error(500, "CUFFT_INTERNAL_ERROR", "InternalServerError")
        return
    body = _read_body(h)
    if b"verbose_json" in body[-4096:]:  # timed segments, as Whisper-style servers give
        h._send(
            200,
            {
                "text": " ".join(t for _, _, t in SPOKEN),
                "duration": 9.0,
                "language": "en",
                "bytes": len(body),
                "segments": [{"start": a, "end": b, "text": t} for a, b, t in SPOKEN],
            },
        )
        return
    h._send(200, {"text": f"received {len(body)} bytes", "bytes": len(body)})


SPOKEN = [
    (0.0, 1.0, "hello there"),
    (1.2, 2.0, "how are you"),
    (4.0, 5.0, "fine thanks"),
    (7.0, 8.0, "and you"),
]
"""What the simulated recording says: (start s, end s, text)."""
SPEAKERS = [(0.0, 2.1, "SPEAKER_00"), (3.9, 9.0, "SPEAKER_01")]
"""Who speaks when in it (SPEAKER_01's 2 s pause at 5-7 s starts a new turn)."""


def _diarization(h: _Handler) -> None:
    """A pyannote-style diarization server: the upload → who speaks when."""
    _read_body(h)
    h._send(200, {"segments": [{"start": a, "end": b, "speaker": s} for a, b, s in SPEAKERS]})


def _speech(h: _Handler) -> None:
    """Audio streamed back in chunks (``--token-delay`` apart): 8 chunks of 4 KiB."""
    _read_body(h)
    if h.stub.a.fail_mode == "wedge" and h.stub.wedged:
        h._error(500, "speech engine failed", "InternalServerError")
        return
    h.send_response(200)
    h.send_header("content-type", "audio/mpeg")
    h.send_header("transfer-encoding", "chunked")
    h.end_headers()
    try:
        for i in range(8):
            if h.stub.a.token_delay:
                time.sleep(h.stub.a.token_delay)
            data = bytes([i]) * 4096
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        h.close_connection = True


EXTRA_ROUTES = {
    "/v1/embeddings": _embeddings,
    "/v1/rerank": _rerank,
    "/v1/audio/transcriptions": _transcriptions,
    "/v1/audio/speech": _speech,
    "/v1/audio/diarization": _diarization,
}
"""Beyond vLLM's chat and completions: what the embeddings and speech services answer."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A tiny OpenAI-compatible stand-in for vllm serve.")
    p.add_argument("model_pos", nargs="?", help="the model (as in `vllm serve MODEL`)")
    p.add_argument("--model", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind")
    p.add_argument(
        "--container-port",
        type=int,
        default=None,
        help="port printed in the start-up lines (default: --port)",
    )
    p.add_argument(
        "--no-listen",
        dest="listen",
        action="store_false",
        help="never bind (a container port that is not published)",
    )
    p.add_argument("--delay", type=float, default=1.0, help="seconds of start-up (default 1)")
    p.add_argument("--fail-mode", choices=("none", "crash", "wedge", "hang"), default="none")
    p.add_argument(
        "--wedge-after",
        type=float,
        default=0.0,
        help="wedge: seconds between ready and the CUDA error",
    )
    p.add_argument("--crash-line", action="append", help="extra line printed before a crash")
    p.add_argument("--wedge-line", action="append", help="extra line printed when wedging")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--mem-total-bytes", type=int, default=128 * GIB)
    p.add_argument(
        "--model-bytes",
        type=int,
        default=0,
        help="weights size (default: guessed from the model name)",
    )
    p.add_argument("--api-key", default=None)
    p.add_argument("--reply", default=DEFAULT_REPLY, help="the fixed reply (one token per word)")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds between SSE chunks")
    p.add_argument("--stop-delay", type=float, default=0.0, help="seconds to shut down")
    p.add_argument("--disable-uvicorn-access-log", dest="access_log", action="store_false")
    p.add_argument(
        "--generic",
        metavar="CMD",
        default=None,
        help="not vLLM: answer 200 to everything at once (an auxiliary container)",
    )
    a, _unknown = p.parse_known_args(argv)  # other vLLM flags are accepted and ignored
    a.model = a.model or a.model_pos or "facebook/opt-125m"
    if a.container_port is None:
        a.container_port = a.port
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    stub = Stub(a)

    stopping = []

    def on_term(signum: int, _frame: Any) -> None:
        # Lock-free and once only: a second SIGTERM (the host's cleanup and the supervisor both
        # send one) may interrupt this handler, or the main thread may hold the output lock.
        if stopping:
            return
        stopping.append(signum)
        os.write(1, b"(APIServer pid=1) INFO:     Shutting down\n")
        if a.stop_delay:
            time.sleep(a.stop_delay)
        os.write(1, b"(APIServer pid=1) INFO:     Finished server process [1]\n")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if a.generic is not None:
        stub.log(f"simulated container: {a.generic}")
        a.access_log = False
        stub.bind()
        stub.ready.set()
    else:
        stub.start()
    while True:  # serve until signalled
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
