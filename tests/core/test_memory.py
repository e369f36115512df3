"""sightscan.memory: freed heap memory goes back to the OS (what keeps the gateway flat over hot-swaps)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sightscan import memory

# A child process, so that this test's own heap does not matter: fragment the heap with many small blocks from
# several threads, free them, and compare resident memory before and after the trim.
CHILD = """
import threading
from sightscan.memory import release_free_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20
keep = []
def churn():
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 125 MB in blocks under the mmap threshold
    keep.append(blocks[-1])  # one survivor per thread keeps glibc from trimming the arena's top by itself
    del blocks
threads = [threading.Thread(target=churn) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
before = rss()
ok = release_free_memory()
print(ok, before, rss())
"""


@pytest.mark.skipif(platform.system() != "Linux" or not memory._libc(), reason="needs glibc (malloc_trim)")
def test_release_free_memory_gives_freed_blocks_back() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
    ok, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert ok
    assert after < before - 100, f"resident {before} MB before the trim, {after} MB after"


def test_without_malloc_trim_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.release_free_memory() is False
