"""Child processes a service starts itself (the crawler's scrapy run): stopping one politely, then for sure.

Part of the shared core, not of the local stack (localsystem/stack/), because production services use it too.
"""

from __future__ import annotations

import subprocess


def stop_popen(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a child we started, then SIGKILL it if it has not exited within `timeout`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
