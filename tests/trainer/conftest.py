"""Trainer fixtures: a synthetic city rendered by localsystem.demo.city, and moto's EC2 server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.synthetic import render_city


@pytest.fixture(scope="session")
def synthetic_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's benchmark city: 5 sights x 60 images, and 12 photos of its streets with no sight."""
    return render_city(tmp_path_factory.mktemp("city5"), 5, 60, negatives=12)


@pytest.fixture(scope="session")
def small_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small city for pipeline and service tests, where the mechanics matter and not the score."""
    return render_city(tmp_path_factory.mktemp("city3"), 3, 22, seed=11, city="Smallville")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server over real HTTP, so boto3 runs unmodified against it."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {log.name}") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Fake credentials (moto accepts any) and the endpoint, as a deployment would set them."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_REGION", "eu-central-1"), ("AWS_ENDPOINT_URL", moto_endpoint)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    assert os.environ["AWS_ENDPOINT_URL"] == moto_endpoint
    return moto_endpoint
