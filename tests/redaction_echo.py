"""An OpenAI-compatible stand-in for the redaction tests (standard library, in a thread): it
echoes the last user message back (streamed in 3-character pieces so tokens are split across
chunks), answers the gateway's NER prompt with the names it is told to find, and records
every request body it received."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from app.redaction.ner import SYSTEM_PROMPT

PREFIX = "You said: "


class EchoUpstream:
    def __init__(self, model: str = "echo", names: list[str] | None = None) -> None:
        self.model = model
        self.names = names or []
        self.requests: list[dict[str, Any]] = []
        self.delay_s = 0.0
        """Pause between streamed pieces (to see that the answer is not buffered)."""
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [{"id": echo.model, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                echo.requests.append(body)
                messages = body.get("messages") or []
                if messages and messages[0].get("content") == SYSTEM_PROMPT:
                    text = messages[-1]["content"]
                    found = [n for n in echo.names if n in text]
                    reply = json.dumps({"persons": found, "orgs": []})
                    self._json(_completion(echo.model, reply))
                    return
                user = [m for m in messages if m.get("role") == "user"]
                reply = PREFIX + (user[-1]["content"] if user else body.get("prompt", ""))
                if not body.get("stream"):
                    self._json(_completion(echo.model, reply))
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(reply), 3):
                    chunk = {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "model": echo.model,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"content": reply[i : i + 3]},
                                "finish_reason": None,
                            }
                        ],
                    }
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                    time.sleep(echo.delay_s)
                end = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": echo.model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def chat_requests(self) -> list[dict[str, Any]]:
        """Requests other than the NER prompt."""
        return [
            r
            for r in self.requests
            if not (r.get("messages") and r["messages"][0].get("content") == SYSTEM_PROMPT)
        ]

    def start(self) -> EchoUpstream:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
