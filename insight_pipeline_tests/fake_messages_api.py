"""A local HTTP server that speaks enough of the Anthropic Messages API for tests.

`POST /v1/messages` is answered by a responder (request JSON -> `Reply`), so tests run the real
anthropic SDK end to end: its HTTP client, retries with backoff (429/5xx), timeouts and response
parsing. Every request is recorded (`requests`, `hits`), and the server reports token usage the
way the API does, estimated from the characters of the request and the answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from insight_pipeline.lib.insights.claude import estimate_tokens


@dataclass
class Reply:
    """What the server sends back: a JSON body (dict) or raw bytes/text, after `delay` s."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Responder = Callable[[dict[str, Any]], Reply]


def payload_of(request: dict[str, Any]) -> dict[str, Any]:
    """The insight JSON the narrator put between <insight_data> tags in the first message."""
    text = request["messages"][0]["content"]
    inner = text.split("<insight_data>\n", 1)[1].split("\n</insight_data>", 1)[0]
    return json.loads(inner)


def prompt_text(request: dict[str, Any]) -> str:
    """Everything the model would read: system prompt and all message contents."""
    parts = [request.get("system") or ""]
    for message in request.get("messages", []):
        content = message["content"]
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


def message(
    request: dict[str, Any],
    text: str,
    *,
    stop_reason: str = "end_turn",
    output_tokens: int | None = None,
) -> Reply:
    """A standard Messages API response holding `text`, with usage estimated like the API's."""
    return Reply(
        body={
            "id": f"msg_fake_{time.monotonic_ns()}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "claude-test"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": estimate_tokens(prompt_text(request)),
                "output_tokens": output_tokens
                if output_tokens is not None
                else estimate_tokens(text),
            },
        }
    )


def grounded_narrative(payload: dict[str, Any]) -> dict[str, str]:
    """A narrative a careful model could write: only numbers from the evidence, placeholders
    for names, no customer text."""
    kind = payload["insight_type"].replace("_", " ")
    evidence = payload.get("evidence") or []
    if evidence:
        first = evidence[0]
        value = float(first["value"])
        shown = f"{value:,.0f}" if abs(value) >= 10 else f"{value:g}"
        detail = f"{first['metric']} stands at {shown} ({first['comparison']})"
    else:
        detail = "the pattern showed up in the latest data"
    return {
        "title": f"{kind.capitalize()} at ACCOUNT",
        "summary": f"ACCOUNT shows a {kind} signal: {detail}.",
        "so_what": "Left alone, patterns like this tend to shape the renewal conversation.",
        "action": f"{payload['suggested_action']} with ACCOUNT this week to talk it through.",
    }


def grounded_responder(request: dict[str, Any]) -> Reply:
    """The default: a valid narrative for whatever insight was asked about."""
    return message(request, json.dumps(grounded_narrative(payload_of(request))))


class FakeMessagesAPI:
    """The server; use as a context manager. `responder` may be swapped between calls."""

    def __init__(self, responder: Responder = grounded_responder) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.raw_bodies: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                if self.path.split("?")[0] != "/v1/messages":
                    self._send(Reply(404, {"type": "error", "error": {"type": "not_found"}}))
                    return
                request = json.loads(raw)
                with api._lock:
                    api.requests.append(request)
                    api.raw_bodies.append(raw)
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                # In flight while the reply is being worked out, not while it is written: the
                # client may read a whole reply and send its next request before this thread
                # returns from writing, which counted one request too many under load.
                try:
                    reply = api.responder(request)
                    if reply.delay:
                        time.sleep(reply.delay)
                finally:
                    with api._lock:
                        api.in_flight -= 1
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, dict | list):
                    data = json.dumps(reply.body).encode()
                    content_type = "application/json"
                else:
                    body = reply.body or b""
                    data = body if isinstance(body, bytes) else str(body).encode()
                    content_type = reply.headers.get("content-type", "application/json")
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", content_type)
                    self.send_header("content-length", str(len(data)))
                    for name, value in reply.headers.items():
                        if name.lower() != "content-type":
                            self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests assert on `requests`, not on logs."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> FakeMessagesAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def error(status: int, kind: str = "api_error", *, retry_after_ms: int = 1) -> Reply:
    """An API error as the Messages API sends it; a tiny retry-after keeps SDK retries fast."""
    return Reply(
        status=status,
        body={"type": "error", "error": {"type": kind, "message": f"fake {status}"}},
        headers={"retry-after-ms": str(retry_after_ms)},
    )
