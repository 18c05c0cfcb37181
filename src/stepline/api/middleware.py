"""ASGI middleware around the API: a request-body size limit and the last-resort handler.

Both are plain ASGI (not Starlette's BaseHTTPMiddleware), so they see the raw byte stream
and exceptions exactly as the server does.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterable

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepline.redact import redact_text

__all__ = ["BodySizeLimit", "UnhandledErrors"]

log = structlog.get_logger("stepline.api")


async def _send_json(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if close:
        # The client may still be sending the body we refused to read.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Answer 413 to a request whose body is larger than ``max_body_bytes``.

    A declared ``Content-Length`` above the limit is refused before any byte is read; a
    streamed (chunked) body is counted as it arrives and refused as soon as it passes the
    limit. An accepted body is buffered (it is at most the limit) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> str:
        return (
            f"request body is larger than {self.max_body_bytes} bytes; "
            "send a smaller document or raise the server's limit"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _send_json(
                    send, 400, f"Content-Length {declared!r} is not a number", close=True
                )
                return
            if int(declared) > self.max_body_bytes:
                await _send_json(send, 413, self._too_large(), close=True)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_json(send, 413, self._too_large(), close=True)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class UnhandledErrors:
    """Turn an exception that no handler claimed into a plain 500, logged without secrets.

    Starlette's own last-resort handler re-raises after answering, so the server would log
    the raw traceback, secrets and all; this one logs it redacted and stops it there.
    """

    def __init__(self, app: ASGIApp, secrets: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self.secrets = secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            try:
                secrets = list(self.secrets())
            except Exception:
                secrets = []
            log.error(
                "unhandled error in an API request",
                method=scope.get("method"),
                path=redact_text(str(scope.get("path", "")), secrets),
                error=redact_text(f"{type(exc).__name__}: {exc}", secrets),
                traceback=redact_text("".join(traceback.format_exception(exc)), secrets),
            )
            if not started:
                await _send_json(
                    send, 500, "internal error in Stepline; the server log has the details"
                )
