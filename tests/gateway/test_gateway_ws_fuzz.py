"""A hypothesis fuzz of the websocket: any binary or text message gets one answer and the connection stays open.

Messages: random bytes, real frames truncated or with bytes flipped, PNG headers declaring any size (bombs
included), any text, any JSON, deep nesting. After each one a real frame must still get detections.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
import zlib

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sightscan import db
from sightscan.config import Settings
from tests.support.gateway import COLOURS, Gateway, jpeg, next_message
from tests.support.onnx_models import solid_colour_model

VALID = jpeg((220, 30, 30))


def _png_header(width: int, height: int, bit_depth: int, colour_type: int, body: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def _flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p % len(out)] ^= 0xFF
    return bytes(out)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)

messages = st.one_of(
    st.binary(max_size=4096),
    st.integers(1, len(VALID) - 1).map(lambda n: VALID[:n]),
    st.lists(st.integers(0, len(VALID) - 1), min_size=1, max_size=8).map(lambda ps: _flip(VALID, ps)),
    st.builds(_png_header, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.sampled_from([1, 8, 16]),
              st.sampled_from([0, 2, 6]), st.binary(max_size=256)),
    st.text(max_size=512),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"type": st.just("select"), "city": st.text(max_size=64)}).map(json.dumps),
    st.integers(1, 20_000).map(lambda n: "[" * n),
)


@pytest.fixture(scope="module")
def fuzz_city(pg: Settings) -> str:
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Fuzz {uuid.uuid4().hex[:10]}")
        onnx, classes = solid_colour_model(COLOURS)
        db.insert_model(cur, city.id, onnx, classes, 64, {})
    return city.name


async def _exchange(gateway: Gateway, city: str, message: bytes | str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={city}") as ws:
        await next_message(ws, "hello")
        await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
        answer = await next_message(ws, ("error", "detections", "hello"))
        # Still open, still answering: a select of the real city, then a real frame.
        await ws.send_str(json.dumps({"type": "select", "city": city}))
        await next_message(ws, "hello")
        await ws.send_bytes(VALID)
        after = await next_message(ws, ("detections", "error"))
        return answer["type"], after["type"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(message=messages)
def test_any_message_gets_one_answer_and_the_connection_stays(gateway: Gateway, fuzz_city: str,
                                                            message: bytes | str) -> None:
    answer, after = asyncio.run(_exchange(gateway, fuzz_city, message))
    assert answer in ("error", "detections", "hello")
    assert after == "detections"
    assert gateway.proc.poll() is None
