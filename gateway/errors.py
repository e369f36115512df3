"""Errors as clients see them: a status and a JSON body {"error": code, "message": text}, never a traceback or
an exception's class name."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp import web


class HTTPTooLarge(web.HTTPClientError):
    """413 without aiohttp's own HTTPRequestEntityTooLarge signature (which wants both sizes)."""

    status_code = 413


def fail(status: type[web.HTTPException], code: str, message: str, **headers: str) -> NoReturn:
    raise status(text=json.dumps({"error": code, "message": message}), content_type="application/json",
                 headers=headers or None)


async def read_json(request: web.Request, example: str) -> Any:
    """The request's JSON body; a body that is not JSON (or nests deeper than the parser can follow) is a 400."""
    try:
        return json.loads(await request.text())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        fail(web.HTTPBadRequest, "bad_json", f"send a JSON body like {example}")
