"""schemathesis against the running gateway's own OpenAPI document, with and without the token.

Every operation gets generated requests, valid and invalid; every answer must be a documented status with a
body matching its schema, and none a 5xx. The number of examples is bounded so the suite stays minutes long;
bench/gateway_fuzz runs the 10,000-request version.
"""

from __future__ import annotations

import itertools
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from gateway import openapi
from sightscan import db
from sightscan.config import Settings
from tests.support.gateway import COLOURS, TOKEN, Gateway
from tests.support.onnx_models import solid_colour_model

schema = schemathesis.openapi.from_dict(openapi.document())
# /ws/detect is a websocket: its handshake is tested in test_gateway_ws and test_gateway_hostile.
schema = schema.exclude(path="/ws/detect")

# Names are normalised (NFKC, case folding, control and format characters removed): a string the schema allows,
# such as "\u200b", can still name nothing and get a 400 by design. That is the one check that does not apply.
EXCLUDED = [positive_data_acceptance]
# A multipart field generated as an empty array is sent as no part at all, which is a valid upload: the
# "invalid" request schemathesis expects refused is a valid one on the wire.
UPLOAD_EXCLUDED = [*EXCLUDED, negative_data_rejection]


def _excluded(case: schemathesis.Case) -> list:
    return UPLOAD_EXCLUDED if case.operation.path.endswith("/images") else EXCLUDED


@pytest.fixture(scope="module")
def real_city(pg: Settings) -> str:
    """A city with a model: every other generated request to a {city} path names it, so uploads and model
    downloads get past the city lookup."""
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Schema {uuid.uuid4().hex[:10]}")
        onnx, classes = solid_colour_model(COLOURS)
        db.insert_model(cur, city.id, onnx, classes, 64, {})
    return city.name


_turn = itertools.count()


def _aim(case: schemathesis.Case, city: str) -> None:
    if case.path_parameters and "city" in case.path_parameters and next(_turn) % 2:
        case.path_parameters["city"] = city


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@schema.parametrize()
@FUZZ
def test_every_operation_answers_as_documented_with_the_token(case: schemathesis.Case, gateway: Gateway,
                                                             real_city: str) -> None:
    _aim(case, real_city)
    case.call_and_validate(base_url=gateway.url, headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=_excluded(case), timeout=30)


@schema.parametrize()
@FUZZ
def test_every_operation_answers_as_documented_without_it(case: schemathesis.Case, gateway: Gateway,
                                                         real_city: str) -> None:
    _aim(case, real_city)
    case.call_and_validate(base_url=gateway.url, excluded_checks=_excluded(case), timeout=30)
