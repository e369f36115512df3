"""Registering the Debezium connector survives a busy Kafka Connect and fails plainly on a refused configuration.

A fresh Connect worker answers 409 while its group rebalances, and on a loaded machine (three brokers starting on
two cores) may leave a request unanswered past its timeout; CI once failed the whole three-broker suite on one
such unanswered PUT. These answers come from a local HTTP server speaking Connect's REST shape; the real Connect
path is exercised by every stack the other tests start.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import connectors
from sightscan.config import Settings


class ScriptedConnect:
    """Answers each PUT with the next scripted step: an HTTP code, or ("hang", seconds) then 200."""

    def __init__(self, script: list[object]) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                step = outer.script.pop(0) if outer.script else 200
                if isinstance(step, tuple):
                    time.sleep(step[1])
                    step = 200
                payload = json.dumps({"name": connectors.CONNECTOR_NAME, "config": body} if step == 200
                                     else {"error_code": step, "message": f"scripted {step}"}).encode()
                self.send_response(int(step))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def settings(self) -> Settings:
        return Settings.from_env({"CONNECT_URL": f"http://127.0.0.1:{self.server.server_port}"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def connect_with() -> Iterator:
    made: list[ScriptedConnect] = []

    def make(script: list[object]) -> ScriptedConnect:
        made.append(ScriptedConnect(script))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_rebalancing_and_unavailable_answers_are_retried_until_accepted(connect_with) -> None:
    connect = connect_with([409, 503, 409])
    connectors.register(connect.settings, timeout=30)
    assert len(connect.bodies) == 4
    assert all(b == connect.bodies[0] for b in connect.bodies), "every retry sends the same configuration"
    assert connect.bodies[0]["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"


def test_an_unanswered_request_is_sent_again(connect_with) -> None:
    connect = connect_with([("hang", 1.5)])
    connectors.register(connect.settings, timeout=30, request_timeout=0.5)
    assert len(connect.bodies) >= 2


def test_a_refused_configuration_fails_at_once_with_connects_reason(connect_with) -> None:
    connect = connect_with([400])
    with pytest.raises(connectors.ConnectorError, match="refused the connector: 400 .*scripted 400"):
        connectors.register(connect.settings, timeout=30)
    assert len(connect.bodies) == 1


def test_a_connect_that_never_accepts_fails_at_the_deadline_with_its_last_answer(connect_with) -> None:
    connect = connect_with([503] * 1000)
    started = time.monotonic()
    with pytest.raises(connectors.ConnectorError, match=r"within 2 s .*last answer: 503"):
        connectors.register(connect.settings, timeout=2)
    assert time.monotonic() - started < 10
