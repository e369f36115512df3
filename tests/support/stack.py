"""A throw-away local stack on free ports, for tests and benchmarks; the jar cache is shared with `stack up`."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from sightscan.config import Settings
from sightscan.stack import LocalStack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ephemeral_settings(home: Path, **overrides: str) -> Settings:
    """Settings for a private stack in `home`: the current environment, with free ports and its own state folder."""
    env = dict(os.environ)
    env.update({
        "SIGHTSCAN_HOME": str(home),
        "PGHOST": "127.0.0.1",
        "PGPORT": str(free_port()),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "CONNECT_URL": f"http://127.0.0.1:{free_port()}",
    })
    env.update(overrides)
    return Settings.from_env(env)


@contextlib.contextmanager
def ephemeral_stack(home: Path, keep: bool = False, **overrides: str) -> Iterator[LocalStack]:
    """Start a private stack; on exit stop it and delete its state (and with it the replication slot)."""
    stack = LocalStack(ephemeral_settings(home, **overrides))
    try:
        stack.up()
        yield stack
    finally:
        if not keep:
            stack.down(purge=True)
