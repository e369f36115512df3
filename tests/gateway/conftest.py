"""Gateway fixtures: a real gateway process on the real stack, and cities with small real ONNX models."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sightscan import db
from sightscan.config import Settings
from tests.support.gateway import COLOURS, Gateway, start_gateway, stop_gateway
from tests.support.onnx_models import solid_colour_model


@pytest.fixture(scope="session")
def pg(stack) -> Settings:  # noqa: ANN001 - the root conftest's LocalStack
    return stack.settings


@pytest.fixture(scope="session")
def gateway(pg: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(pg, tmp_path_factory.mktemp("gateway") / "gateway.log")
    yield gw
    stop_gateway(gw)
    assert gw.proc.returncode in (0, -15), gw.log.read_text()[-3000:]


@dataclass
class CityModel:
    city: db.City
    model: db.StoredModel | None


@pytest.fixture
def make_city(pg: Settings) -> Callable[..., CityModel]:
    """A fresh city (unique name), with a colour model (v1) unless with_model=False."""

    def make(with_model: bool = True, prefix: str = "Gwtest") -> CityModel:
        with db.transaction(pg) as cur:
            city, _ = db.request_city(cur, f"{prefix} {uuid.uuid4().hex[:10]}")
            model = None
            if with_model:
                onnx, classes = solid_colour_model(COLOURS)
                model = db.insert_model(cur, city.id, onnx, classes, 64, {"map50": 0.9})
        return CityModel(city, model)

    return make


