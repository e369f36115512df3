"""A throw-away local stack on free ports, for tests and benchmarks; the jar cache is shared with `stack up`."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

from localsystem.stack import LocalStack
from sightscan.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(n: int) -> int:
    """The first of n consecutive free ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


def ephemeral_settings(home: Path, brokers: int = 1, **overrides: str) -> Settings:
    """Settings for a private stack in `home`: the current environment, with free ports and its own state folder;
    `brokers` Kafka nodes (node i on the block's ports 2i and 2i+1, every broker listed for the clients)."""
    env = dict(os.environ)
    base = free_port_block(2 * brokers)
    env.update({
        "SIGHTSCAN_HOME": str(home),
        "PGHOST": "127.0.0.1",
        "PGPORT": str(free_port()),
        "KAFKA_BROKERS": str(brokers),
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(brokers)),
        "KAFKA_CONTROLLER_PORT": str(base + 1),
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
