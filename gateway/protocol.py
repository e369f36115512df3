"""The HTTP server under the app, answering requests that never reach it (malformed or over-long request lines
and headers) with a plain 400 that echoes nothing the client sent.

aiohttp answers those with its parser's message, which quotes the offending bytes (the first hundred of an
over-long `Authorization: Bearer ...`, say), and logs it with a traceback. A credential has no business in a
response body or a log, so the reason is named and the bytes are dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong

log = logging.getLogger(__name__)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, LineTooLong):
        return "the request line or a header is too long"
    if isinstance(exc, BadHttpMethod):
        return "this is not an HTTP request"
    return "the request line or a header is malformed"


class _QuietRequestHandler(web_protocol.RequestHandler):
    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        reason = _reason(exc)
        log.info("bad HTTP request refused", extra={"remote": request.remote, "status": status, "reason": reason})
        response = web.Response(status=status, text=f"{status} Bad Request: {reason}\n", content_type="text/plain")
        response.force_close()
        return response


class _QuietServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """web.AppRunner whose connections answer malformed requests with _QuietRequestHandler."""

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        # The app builds its own Server; only the connection handler it creates differs, so its class is swapped
        # (same attributes) rather than the app's construction copied.
        server.__class__ = _QuietServer
        return server
