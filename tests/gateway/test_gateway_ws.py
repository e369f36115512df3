"""The websocket protocol against a real gateway process: detections, bad frames, Origin, idle, latest frame wins."""

from __future__ import annotations

import asyncio
import io
import json
import random
import urllib.request
import uuid

import aiohttp
import numpy as np
import pytest
from PIL import Image

from sightscan import db
from sightscan.config import Settings
from tests.support.gateway import COLOURS, Gateway, jpeg, metric, next_message, noise_jpeg
from tests.support.onnx_models import solid_colour_model


def ws_url(gateway: Gateway, city: str) -> str:
    return f"{gateway.ws_url}?city={city}"


async def _hello_then_detect(gateway: Gateway, city: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gateway, city)) as ws:
        hello = await next_message(ws, "hello")
        assert hello["model"]["model_version"] == 1 and hello["model"]["classes"] == list(COLOURS)
        for frame, (name, colour) in enumerate(COLOURS.items(), start=1):
            await ws.send_bytes(jpeg(colour))
            det = await next_message(ws, "detections")
            assert (det["frame"], det["model_version"], det["width"], det["height"]) == (frame, 1, 160, 120)
            best = det["detections"][0]
            assert best["sight"] == name and best["score"] > 0.9
            assert best["box"] == pytest.approx([0.1, 0.1, 0.9, 0.9], abs=1e-3)
            assert 0 < det["latency_ms"] < 5000


def test_frames_get_detections(gateway: Gateway, make_city) -> None:
    asyncio.run(_hello_then_detect(gateway, make_city().city.name))


async def _bad_frames(gateway: Gateway, city: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gateway, city)) as ws:
        await next_message(ws, "hello")
        await ws.send_str("hello there")
        assert (await next_message(ws, "error"))["code"] == "text_not_supported"
        await ws.send_str('{"type": "select"}')
        assert (await next_message(ws, "error"))["code"] == "text_not_supported"
        await ws.send_bytes(b"\x00\x01garbage" * 10)
        err = await next_message(ws, "error")
        assert (err["code"], err["frame"]) == ("not_an_image", 1)
        await ws.send_bytes(b"")
        assert (await next_message(ws, "error"))["code"] == "not_an_image"
        await ws.send_bytes(jpeg((1, 2, 3))[:150])  # a JPEG cut short
        assert (await next_message(ws, "error"))["code"] == "not_an_image"
        await ws.send_bytes(b"\xff\xd8" + bytes(300_001))  # over GATEWAY_MAX_FRAME_BYTES
        err = await next_message(ws, "error")
        assert (err["code"], err["frame"]) == ("too_large", 4)
        bomb = io.BytesIO()
        Image.new("1", (20_000, 20_000)).save(bomb, "PNG")
        await ws.send_bytes(bomb.getvalue())
        assert (await next_message(ws, "error"))["code"] == "too_large"
        await ws.send_bytes(jpeg(COLOURS["Blue Hall"]))
        det = await next_message(ws, "detections")
        assert det["frame"] == 6 and det["detections"][0]["sight"] == "Blue Hall"
        assert not ws.closed


def test_bad_frames_get_errors_and_the_connection_stays(gateway: Gateway, make_city) -> None:
    asyncio.run(_bad_frames(gateway, make_city().city.name))


async def _unknown_city(gateway: Gateway, known: str, bare: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gateway, "Atlantis " + uuid.uuid4().hex)) as ws:
        assert (await next_message(ws, "error"))["code"] == "unknown_city"
        await ws.send_bytes(jpeg((200, 0, 0)))
        assert (await next_message(ws, "error"))["code"] == "unknown_city"
        await ws.send_json({"type": "select", "city": bare})
        hello = await next_message(ws, "hello")
        assert hello["model"] is None
        await ws.send_bytes(jpeg((200, 0, 0)))
        assert (await next_message(ws, "error"))["code"] == "no_model"
        await ws.send_json({"type": "select", "city": known.upper()})
        assert (await next_message(ws, "hello"))["model"]["model_version"] == 1
        await ws.send_bytes(jpeg(COLOURS["Red Gate"]))
        assert (await next_message(ws, "detections"))["detections"][0]["sight"] == "Red Gate"


def test_unknown_city_and_city_without_model(gateway: Gateway, make_city) -> None:
    asyncio.run(_unknown_city(gateway, make_city().city.name, make_city(with_model=False).city.name))


async def _origin(gateway: Gateway, city: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(gateway, city), headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        async with http.ws_connect(ws_url(gateway, city), headers={"Origin": gateway.url}) as ws:
            assert (await next_message(ws, "hello"))["city"] == city


def test_origin_is_checked(gateway: Gateway, make_city) -> None:
    asyncio.run(_origin(gateway, make_city().city.name))


async def _idle(gateway: Gateway, city: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gateway, city)) as ws:
        await next_message(ws, "hello")
        started = asyncio.get_running_loop().time()
        assert (await next_message(ws, "bye", timeout=15))["reason"] == "idle"
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
        assert 3 <= asyncio.get_running_loop().time() - started < 12  # GATEWAY_IDLE_TIMEOUT_S=4 in the fixture


def test_idle_connections_are_closed(gateway: Gateway, make_city) -> None:
    asyncio.run(_idle(gateway, make_city().city.name))


async def _burst(gateway: Gateway, city: str) -> None:
    rng = np.random.default_rng(1)
    frames = [noise_jpeg(rng, (640, 480)) for _ in range(40)]
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gateway, city)) as ws:
        await next_message(ws, "hello")
        for frame in frames:  # as fast as the socket takes them: far faster than they can be decoded
            await ws.send_bytes(frame)
        answered, dropped = [], 0
        while not answered or answered[-1] != len(frames):
            det = await next_message(ws, "detections", timeout=30)
            answered.append(det["frame"])
            dropped += det["dropped"]
        assert answered == sorted(answered)
        assert len(answered) < len(frames), "a busy server must skip stale frames"
        assert len(answered) + dropped == len(frames)


def test_latest_frame_wins(gateway: Gateway, make_city) -> None:
    asyncio.run(_burst(gateway, make_city().city.name))


async def _many_clients(gateway: Gateway, city: str, clients: int) -> None:
    rng = np.random.default_rng(2)
    frames = [noise_jpeg(rng, (160, 120)) for _ in range(8)]

    async def client(http: aiohttp.ClientSession) -> int:
        async with http.ws_connect(ws_url(gateway, city)) as ws:
            await next_message(ws, "hello")
            got = 0
            for frame in frames:
                await ws.send_bytes(frame)
                await next_message(ws, "detections", timeout=30)
                got += 1
            return got

    async with aiohttp.ClientSession() as http:
        assert await asyncio.gather(*(client(http) for _ in range(clients))) == [len(frames)] * clients


def test_frames_of_many_clients_are_batched(gateway: Gateway, pg: Settings) -> None:
    # A model with a real convolution cost, so frames of other clients gather while one batch runs.
    onnx, classes = solid_colour_model(COLOURS, backbone=True)
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Gwbatch {uuid.uuid4().hex[:8]}")
        db.insert_model(cur, city.id, onnx, classes, 160, {})
    before = urllib.request.urlopen(gateway.url + "/metrics").read().decode()
    asyncio.run(_many_clients(gateway, city.name, clients=8))
    after = urllib.request.urlopen(gateway.url + "/metrics").read().decode()
    batches = metric(after, "sightscan_gateway_batch_size_count") - metric(before, "sightscan_gateway_batch_size_count")
    frames = metric(after, "sightscan_gateway_batch_size_sum") - metric(before, "sightscan_gateway_batch_size_sum")
    assert frames == 64
    assert batches < frames, "8 clients of one city should share inference batches"


def _fuzz_message(rng: random.Random, valid: list[bytes]) -> bytes | str:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 4000))
    if kind == 1:  # JPEG signature, then noise
        return b"\xff\xd8\xff\xe0" + rng.randbytes(rng.randrange(0, 3000))
    if kind == 2:  # a real JPEG cut anywhere
        frame = rng.choice(valid)
        return frame[: rng.randrange(0, len(frame))]
    if kind == 3:  # a real JPEG with bytes flipped
        frame = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 20)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        return bytes(frame)
    if kind == 4:  # PNG / WebP / GIF signatures with noise
        return rng.choice([b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a"]) + rng.randbytes(500)
    if kind == 5:  # over the frame limit (under aiohttp's hard cap)
        return b"\xff\xd8" + bytes(rng.randrange(300_001, 320_000))
    if kind == 6:  # text instead of binary
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 200)))
    if kind == 7:
        return rng.choice(['{"type": "select", "city": 5}', "{}", "null", '{"type":"select"'])
    return rng.choice(valid)  # some good frames in the mix


async def _fuzz(gateway: Gateway, city: str, per_client: int, clients: int) -> tuple[int, int]:
    rng = random.Random(1234)
    valid = [jpeg(c, size=(rng.randrange(16, 400), rng.randrange(16, 300))) for c in COLOURS.values()]
    sent = received = 0

    async def client(http: aiohttp.ClientSession, seed: int) -> None:
        nonlocal sent, received
        crng = random.Random(seed)
        async with http.ws_connect(ws_url(gateway, city), max_msg_size=0) as ws:
            await next_message(ws, "hello")

            last_answer: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
            binary = 0
            final_frame = -1

            async def read() -> None:
                nonlocal received
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        received += 1
                        body = json.loads(msg.data)
                        if body["type"] == "detections" and body["frame"] == final_frame and not last_answer.done():
                            last_answer.set_result(body)

            reader = asyncio.create_task(read())
            for _ in range(per_client):
                message = _fuzz_message(crng, valid)
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
                    binary += 1
                sent += 1
            # The connection still works after all that: the newest frame is always answered.
            final_frame = binary + 1
            await ws.send_bytes(jpeg(COLOURS["Green Tower"]))
            answer = await asyncio.wait_for(last_answer, 60)
            assert answer["detections"][0]["sight"] == "Green Tower"
            assert not ws.closed
            reader.cancel()
        # a fresh connection on the same server is served normally
        async with http.ws_connect(ws_url(gateway, city)) as ws:
            await next_message(ws, "hello")
            await ws.send_bytes(jpeg(COLOURS["Green Tower"]))
            assert (await next_message(ws, "detections"))["detections"][0]["sight"] == "Green Tower"

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http, seed) for seed in range(clients)))
    return sent, received


def test_fuzz_leaves_the_server_up_and_bounded(gateway: Gateway, make_city) -> None:
    city = make_city().city.name
    asyncio.run(_fuzz(gateway, city, per_client=150, clients=4))  # warm-up: allocator pools, code paths
    rss_before = gateway.rss_kib()
    sent, received = asyncio.run(_fuzz(gateway, city, per_client=1000, clients=4))
    rss_after = gateway.rss_kib()
    assert sent == 4000 and received > 1000  # errors and detections came back all along
    assert gateway.proc.poll() is None
    assert urllib.request.urlopen(gateway.url + "/healthz").status == 200
    assert rss_after - rss_before < 60_000, f"gateway RSS grew {rss_before} -> {rss_after} KiB during the fuzz"
