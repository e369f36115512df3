"""schemathesis against the running gateway's own OpenAPI document, with and without the token.

Every operation gets generated requests, valid and invalid; every answer must be a documented status with a
body matching its schema, and none a 5xx. The number of examples is bounded so the suite stays minutes long;
bench/gateway_fuzz runs the 10,000-request version.
"""

from __future__ import annotations

import schemathesis
from gw_helpers import TOKEN, Gateway
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway import openapi

schema = schemathesis.openapi.from_dict(openapi.document())
# /ws/detect is a websocket: its handshake is tested in test_gateway_ws and test_gateway_hostile.
schema = schema.exclude(path="/ws/detect")

# Names are normalised (NFKC, case folding, control and format characters removed): a string the schema allows,
# such as "\u200b", can still name nothing and get a 400 by design. That is the one check that does not apply.
EXCLUDED = [positive_data_acceptance]


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@schema.parametrize()
@FUZZ
def test_every_operation_answers_as_documented_with_the_token(case: schemathesis.Case, gateway: Gateway) -> None:
    case.call_and_validate(base_url=gateway.url, headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=EXCLUDED, timeout=30)


@schema.parametrize()
@FUZZ
def test_every_operation_answers_as_documented_without_it(case: schemathesis.Case, gateway: Gateway) -> None:
    case.call_and_validate(base_url=gateway.url, excluded_checks=EXCLUDED, timeout=30)
