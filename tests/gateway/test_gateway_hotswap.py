"""Hot-swap under a live connection: a new model row in PostgreSQL reaches the gateway through Debezium and Kafka,
and the open websocket keeps going on the new model, told of its version."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import aiohttp

from sightscan import db
from sightscan.config import Settings
from tests.support.gateway import COLOURS, Gateway, jpeg, metric, next_message
from tests.support.onnx_models import solid_colour_model
from tests.support.waiting import wait_until


async def _swap(gateway: Gateway, pg: Settings, city: db.City) -> None:
    renamed = {f"{name} (v2)": colour for name, colour in COLOURS.items()}
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={city.name}") as ws:
        assert (await next_message(ws, "hello"))["model"]["model_version"] == 1
        await ws.send_bytes(jpeg(COLOURS["Red Gate"]))
        first = await next_message(ws, "detections")
        assert (first["model_version"], first["detections"][0]["sight"]) == (1, "Red Gate")

        onnx, classes = solid_colour_model(renamed)
        stored_at = time.monotonic()
        with db.transaction(pg) as cur:  # what the trainer does
            v2 = db.insert_model(cur, city.id, onnx, classes, 96, {"map50": 0.95})
        assert v2.version == 2

        # Keep streaming frames, as a webcam would, while the change travels PostgreSQL -> Debezium -> Kafka.
        swapped = None
        deadline = time.monotonic() + 90
        while swapped is None and time.monotonic() < deadline:
            await ws.send_bytes(jpeg(COLOURS["Red Gate"]))
            while True:
                body = await next_message(ws, ("detections", "model"), timeout=30)
                if body["type"] == "model":
                    swapped = body
                    break
                assert body["model_version"] == 1
                if body["frame"] is not None:
                    break
            await asyncio.sleep(0.1)
        assert swapped is not None, "no model message within 90 s"
        assert (swapped["model_version"], swapped["classes"], swapped["input_size"]) == (2, classes, 96)
        print(f"swap arrived {time.monotonic() - stored_at:.2f} s after the row was committed")

        await ws.send_bytes(jpeg(COLOURS["Red Gate"]))
        while True:  # frames decoded before the swap may still be answered by v1; the next ones are v2
            det = await next_message(ws, "detections")
            if det["model_version"] == 2:
                break
        assert det["detections"][0]["sight"] == "Red Gate (v2)"
        assert not ws.closed


def _released(gateway: Gateway) -> float:
    return metric(urllib.request.urlopen(gateway.url + "/metrics").read().decode(),
                  "sightscan_gateway_models_released_total")


def test_model_hot_swap_under_a_live_connection(gateway: Gateway, pg: Settings, make_city) -> None:
    made = make_city()
    released = _released(gateway)
    asyncio.run(_swap(gateway, pg, made.city))
    status = asyncio.run(_status(gateway, made.city.name))
    assert status["model"]["version"] == 2 and status["serving_version"] == 2
    # v1's session is freed and its memory handed back once its last frame is answered (bench/soak saw the
    # gateway grow by a model's size at every swap before).
    wait_until(lambda: _released(gateway) > released, timeout=45, what="the swapped-out v1 to be released",
               explain=lambda: gateway.log.read_text()[-3000:])


async def _status(gateway: Gateway, name: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/api/cities/{name}") as res:
        return await res.json()


async def _broken_model(gateway: Gateway, pg: Settings, city: db.City, baseline: float) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={city.name}") as ws:
        assert (await next_message(ws, "hello"))["model"]["model_version"] == 1
        with db.transaction(pg) as cur:
            db.insert_model(cur, city.id, b"this is not onnx", ["X"], 64, {})
        # The broken v2 arrives by Kafka too; the gateway refuses it and keeps serving v1 on the same connection.
        deadline = time.monotonic() + 30
        failures = 0.0
        while time.monotonic() < deadline and failures < 1:
            await ws.send_bytes(jpeg(COLOURS["Blue Hall"]))
            det = await next_message(ws, "detections")
            assert (det["model_version"], det["detections"][0]["sight"]) == (1, "Blue Hall")
            async with http.get(f"{gateway.url}/metrics") as res:
                text = await res.text()
            failures = metric(text, "sightscan_gateway_model_load_failures_total") - baseline
            await asyncio.sleep(0.2)
        assert failures >= 1, "the broken model's event never reached the gateway"
        await ws.send_bytes(jpeg(COLOURS["Blue Hall"]))
        assert (await next_message(ws, "detections"))["model_version"] == 1


def test_a_broken_model_row_does_not_replace_a_working_one(gateway: Gateway, pg: Settings, make_city) -> None:
    baseline = metric(urllib.request.urlopen(gateway.url + "/metrics").read().decode(),
                      "sightscan_gateway_model_load_failures_total")
    asyncio.run(_broken_model(gateway, pg, make_city().city, baseline))
