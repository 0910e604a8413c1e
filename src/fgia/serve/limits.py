"""Request-body limits as ASGI middleware: size (JSON 413, from Content-Length before reading when it is sent)
and time (JSON 408 for an upload that stalls), so a slow or oversized client cannot hold the service."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimits:
    """Refuse request bodies over `max_bytes` and bodies not fully received within `timeout_s`.

    The checks raise HTTPException from `receive`, so the route's body parsing turns them into the service's
    usual JSON error; a declared Content-Length over the limit is answered before anything is read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self, size: int) -> str:
        return f"Content Too Large: the request body is {size:,} bytes; the limit is {self.max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._too_large(int(declared))}, status_code=413)(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive() only reports a disconnect: no deadline then
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.timeout_s:g} s (stalled "
                                         "upload); send it again") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large(received))
            return message

        await self.app(scope, limited_receive, send)
