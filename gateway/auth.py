"""Who writes: the operator (SIGHTSCAN_API_TOKEN) or a user with a token of their own (docs/corrections.md).

A user's token is looked up by its SHA-256, the only form the warehouse keeps; a disowned user's token is refused.
Without SIGHTSCAN_API_TOKEN the gateway refuses every write, users' included.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from gateway.errors import fail
from gateway.state import STATE
from sightscan import db


@dataclass(frozen=True)
class Writer:
    """Who sent a request: `user` None is the operator."""

    user: db.User | None = None

    @property
    def is_operator(self) -> bool:
        return self.user is None

    @property
    def key(self) -> str:
        """The credential, as the rate limit counts it."""
        return "operator" if self.user is None else f"user:{self.user.id}"

    @property
    def name(self) -> str | None:
        return None if self.user is None else self.user.name


async def require_token(request: web.Request) -> Writer:
    """The writer of a request that needs a token: 401 without one, 403 for a token that is no one's or a disowned
    user's, 503 when the gateway has no operator token (writes disabled)."""
    state = request.app[STATE]
    expected = state.settings.api_token
    if not expected:
        fail(web.HTTPServiceUnavailable, "writes_disabled",
             "this gateway has no API token configured; set SIGHTSCAN_API_TOKEN to enable writes")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        fail(web.HTTPUnauthorized, "token_required", "this needs 'Authorization: Bearer <token>'",
             **{"WWW-Authenticate": 'Bearer realm="sightscan"'})
    sent = token.encode("utf-8", "surrogatepass")  # whatever the header held: a wrong token is only wrong
    if hmac.compare_digest(sent, expected.encode()):
        return Writer()
    user = await state.pg.user_by_token_sha256(hashlib.sha256(sent).hexdigest())
    if user is None:
        fail(web.HTTPForbidden, "bad_token", "the token is not valid")
    if user.disowned_at is not None:
        fail(web.HTTPForbidden, "disowned", f"user {user.name!r} was disowned; their token is refused")
    return Writer(user)


async def require_operator(request: web.Request) -> Writer:
    """As require_token, and a user's token is a 403: this is the operator's to do."""
    writer = await require_token(request)
    if not writer.is_operator:
        fail(web.HTTPForbidden, "operator_only", "only the operator's token (SIGHTSCAN_API_TOKEN) may do this")
    return writer
