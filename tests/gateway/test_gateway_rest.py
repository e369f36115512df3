"""REST API against a real gateway process and the real warehouse."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from gateway.app import make_app
from gateway.settings import GatewaySettings
from sightscan import db
from sightscan.config import ConfigError, Settings
from tests.support.gateway import Gateway, call, call_json, jpeg, multipart


def test_request_city_then_list_it(gateway: Gateway) -> None:
    name = f"Lisbon {uuid.uuid4().hex[:8]}"
    status, body = call_json(gateway, "POST", "/api/cities", {"name": name})
    assert status == 201 and body["created"] is True and body["status"] == "requested"
    status, again = call_json(gateway, "POST", "/api/cities", {"name": "  " + name.upper() + " "})
    assert status == 200 and again["created"] is False and again["id"] == body["id"]
    status, listing = call_json(gateway, "GET", "/api/cities", token=None)
    assert status == 200
    row = next(c for c in listing["cities"] if c["id"] == body["id"])
    assert row == {**row, "name": name, "status": "requested", "sights": 0, "images": 0, "labelled_images": 0,
                   "model": None}


@pytest.mark.parametrize("token, expected, code", [(None, 401, "token_required"), ("wrong", 403, "bad_token")])
def test_writes_need_the_token(gateway: Gateway, token: str | None, expected: int, code: str) -> None:
    status, body = call_json(gateway, "POST", "/api/cities", {"name": "Nowhere"}, token=token)
    assert (status, body["error"]) == (expected, code)
    body_bytes, ctype = multipart({"image": ("x.jpg", jpeg((1, 2, 3)))})
    status, _, data = call(gateway, "POST", "/api/cities/Nowhere/images", body_bytes, token=token, content_type=ctype)
    assert (status, json.loads(data)["error"]) == (expected, code)


@pytest.mark.parametrize("payload, code", [(b"{not json", "bad_json"), ({"name": ""}, "bad_name"),
                                           ({"name": "   "}, "bad_name"), ({"name": 7}, "bad_name"),
                                           ([1, 2], "bad_name"), ({"name": "x" * 201}, "bad_name")])
def test_request_city_rejects_bad_input(gateway: Gateway, payload: Any, code: str) -> None:
    status, body = call_json(gateway, "POST", "/api/cities", payload)
    assert (status, body["error"]) == (400, code)


def test_upload_is_validated_and_stored_encoded(gateway: Gateway, make_city, pg: Settings) -> None:
    city = make_city(with_model=False).city
    image = jpeg((10, 120, 240), size=(200, 150))
    body, ctype = multipart({"image": ("photo.jpg", image), "sight": "Blue Hall"})
    status, _, data = call(gateway, "POST", f"/api/cities/{city.name}/images", body, content_type=ctype)
    result = json.loads(data)
    assert status == 201, result
    assert (result["mime_type"], result["width"], result["height"]) == ("image/jpeg", 200, 150)
    with db.transaction(pg) as cur:
        cur.execute("SELECT i.data, i.mime_type, i.origin, i.width, i.height, s.name FROM images i "
                    "LEFT JOIN sights s ON s.id = i.sight_id WHERE i.id = %s", (result["id"],))
        data_db, mime, origin, width, height, sight = cur.fetchone()
    assert bytes(data_db) == image  # the encoded bytes as sent, not raw pixels
    assert (mime, origin, width, height, sight) == ("image/jpeg", "upload", 200, 150, "Blue Hall")
    status, _, data = call(gateway, "POST", f"/api/cities/{city.name}/images", body, content_type=ctype)
    assert status == 200 and json.loads(data)["duplicate"] is True
    webp = io.BytesIO()
    Image.new("RGB", (32, 32), (5, 5, 5)).save(webp, "WEBP")
    body, ctype = multipart({"image": ("a.webp", webp.getvalue())})
    status, _, data = call(gateway, "POST", f"/api/cities/{city.name}/images", body, content_type=ctype)
    assert status == 201 and json.loads(data)["mime_type"] == "image/webp"
    status, row = call_json(gateway, "GET", f"/api/cities/{city.name}", token=None)
    assert status == 200 and row["images"] == 2 and row["sights"] == 1


@pytest.mark.parametrize("fields, ctype, expected, code", [
    ({"image": ("a.txt", b"hello, not an image")}, None, 400, "not_an_image"),
    ({"image": ("a.jpg", jpeg((1, 1, 1))[:200])}, None, 400, "not_an_image"),  # truncated JPEG
    ({"image": ("a.gif", b"GIF89a" + bytes(100))}, None, 400, "not_an_image"),
    ({"sight": "no file"}, None, 400, "image_required"),
    ({"image": ("big.bin", bytes(500_000))}, None, 413, "too_large"),
    ({"image": ("a.jpg", b"x")}, "application/json", 415, "multipart_required"),
])
def test_upload_rejects_bad_input(gateway: Gateway, make_city, fields: dict, ctype: str | None, expected: int,
                                  code: str) -> None:
    city = make_city(with_model=False).city
    body, multipart_type = multipart(fields)
    status, _, data = call(gateway, "POST", f"/api/cities/{city.name}/images", body,
                           content_type=ctype or multipart_type)
    assert (status, json.loads(data)["error"]) == (expected, code)


def test_upload_refuses_a_decompression_bomb(gateway: Gateway, make_city) -> None:
    city = make_city(with_model=False).city
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")  # small file, 400 megapixels decoded
    body, ctype = multipart({"image": ("bomb.png", bomb.getvalue())})
    status, _, data = call(gateway, "POST", f"/api/cities/{city.name}/images", body, content_type=ctype)
    assert (status, json.loads(data)["error"]) == (413, "too_large")


def test_unknown_city_is_404(gateway: Gateway) -> None:
    for method, path in [("GET", "/api/cities/Atlantis%20X"), ("GET", "/api/cities/Atlantis%20X/model"),
                         ("GET", "/api/cities/Atlantis%20X/model.onnx")]:
        status, _, data = call(gateway, method, path, token=None)
        assert (status, json.loads(data)["error"]) == (404, "unknown_city")
    body, ctype = multipart({"image": ("a.jpg", jpeg((1, 2, 3)))})
    status, _, data = call(gateway, "POST", "/api/cities/Atlantis%20X/images", body, content_type=ctype)
    assert (status, json.loads(data)["error"]) == (404, "unknown_city")


def test_model_download(gateway: Gateway, make_city) -> None:
    made = make_city()
    status, meta = call_json(gateway, "GET", f"/api/cities/{made.city.name}/model", token=None)
    assert status == 200
    assert (meta["version"], meta["classes"], meta["input_size"]) == (1, made.model.classes, 64)
    status, headers, onnx = call(gateway, "GET", meta["download"], token=None)
    assert status == 200 and onnx == made.model.onnx
    assert headers["X-Model-Version"] == "1" and json.loads(headers["X-Model-Classes"]) == made.model.classes
    bare = make_city(with_model=False).city
    status, body = call_json(gateway, "GET", f"/api/cities/{bare.name}/model", token=None)
    assert (status, body["error"]) == (404, "no_model")


def test_status_includes_model(gateway: Gateway, make_city) -> None:
    made = make_city()
    status, row = call_json(gateway, "GET", f"/api/cities/{made.city.name}", token=None)
    assert status == 200
    assert row["model"]["version"] == 1 and row["model"]["metrics"] == {"map50": 0.9}


IMAGE_LEVEL_METRICS = {
    "top1": 0.975, "map50": None, "map": None, "box_images_heldout": 0, "heldout_images": 40, "train_images": 160,
    "labels": {"image_level": 160, "boxes": 0},
    "method": "CAM pseudo-boxes + PSOL box regression, 1 self-training round",
    "confusion": {"classes": ["Red Gate", "Green Tower", "Blue Hall"], "matrix": [[13, 1, 0], [0, 13, 0], [0, 0, 13]]},
    "backbone": "resnet18", "pretrained": False, "train_seconds": 75.0, "epochs_run": 20, "best_epoch": 17,
    "device": "cpu"}


def test_cities_list_the_models_figures_by_readable_name(gateway: Gateway, make_city, pg: Settings) -> None:
    legacy = make_city()  # v1 metrics {"map50": 0.9}: scored against whole-image weak boxes
    made = make_city()
    with db.transaction(pg) as cur:
        db.insert_model(cur, made.city.id, made.model.onnx, made.model.classes, 64, IMAGE_LEVEL_METRICS)
    status, listing = call_json(gateway, "GET", "/api/cities", token=None)
    assert status == 200
    rows = {c["id"]: c for c in listing["cities"]}
    model = rows[made.city.id]["model"]
    assert model["version"] == 2 and model["metrics"] == IMAGE_LEVEL_METRICS  # kept as is for integrators
    figures = {f["key"]: f for f in model["figures"]}
    assert [f["key"] for f in model["figures"]][:4] == ["top1", "map50", "map", "confusion"]
    assert (figures["top1"]["name"], figures["top1"]["display"], figures["top1"]["basis"]) == (
        "Held-out top-1 sight accuracy", "97.5 %", "40 held-out images, image-level labels")
    assert (figures["map50"]["name"], figures["map50"]["value"], figures["map50"]["basis"]) == (
        "Box mAP@0.5 (true boxes only)", None, "no true boxes in the held-out split")
    assert figures["confusion"]["value"] == IMAGE_LEVEL_METRICS["confusion"]
    assert figures["backbone"]["display"] == "resnet18, trained from scratch (no ImageNet weights)"
    [old] = rows[legacy.city.id]["model"]["figures"]
    assert (old["name"], old["display"], old["basis"]) == (
        "Box mAP@0.5 (legacy: whole-image weak boxes)", "0.900",
        "agreement with whole-image weak boxes, not a measure of recognition")
    # The same figures on one city's status (the page's pipeline panel) and on its model's metadata.
    status, row = call_json(gateway, "GET", f"/api/cities/{made.city.name}", token=None)
    assert status == 200 and row["model"]["figures"] == model["figures"]
    status, meta = call_json(gateway, "GET", f"/api/cities/{made.city.name}/model", token=None)
    assert status == 200 and meta["figures"] == model["figures"]


def test_openapi_health_and_metrics(gateway: Gateway) -> None:
    status, doc = call_json(gateway, "GET", "/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/api/cities", "/api/cities/{city}/images", "/api/cities/{city}/model.onnx", "/ws/detect"} <= set(
        doc["paths"])
    city_model = doc["components"]["schemas"]["CityStatus"]["properties"]["model"]["properties"]
    assert city_model["figures"]["items"] == {"$ref": "#/components/schemas/Figure"}
    assert call_json(gateway, "GET", "/healthz", token=None) == (200, {"ok": True})
    status, ready = call_json(gateway, "GET", "/readyz", token=None)
    assert status == 200 and ready["checks"] == {"warehouse": "ok", "model_events": "ok"}
    status, headers, text = call(gateway, "GET", "/metrics", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b'sightscan_gateway_http_requests_total{route="/healthz",status="200"}' in text
    status, _, page = call(gateway, "GET", "/", token=None)
    assert status == 200 and b"getUserMedia" not in page and b"/static/app.js" in page
    status, _, script = call(gateway, "GET", "/static/app.js", token=None)
    assert status == 200 and b"getUserMedia" in script


async def _without_token(pg: Settings) -> None:
    settings = GatewaySettings.from_env({}, port=0, follow_models=False)
    assert settings.api_token == ""
    async with TestClient(TestServer(make_app(settings, pg))) as client:
        res = await client.post("/api/cities", json={"name": "Lisbon"}, headers={"Authorization": "Bearer "})
        assert (res.status, (await res.json())["error"]) == (503, "writes_disabled")
        res = await client.get("/api/cities")
        assert res.status == 200  # reads stay open
        res = await client.get("/readyz")
        assert (await res.json())["checks"] == {"warehouse": "ok"}


def test_writes_refused_when_no_token_is_configured(pg: Settings) -> None:
    asyncio.run(_without_token(pg))


@pytest.mark.parametrize("name, value", [("DOS_PORT", "http"), ("DOS_PORT", "70000"),
                                         ("GATEWAY_SCORE_THRESHOLD", "1.5"), ("GATEWAY_MAX_FRAME_BYTES", "0"),
                                         ("GATEWAY_ALLOWED_ORIGINS", "example.org"),
                                         ("GATEWAY_FOLLOW_MODELS", "maybe")])
def test_malformed_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        GatewaySettings.from_env({name: value})
    assert GatewaySettings.from_env({"DOS_PORT": "9000", "GATEWAY_ALLOWED_ORIGINS": "https://a.org, *"}).port == 9000
