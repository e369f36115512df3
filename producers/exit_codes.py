"""Exit codes of `python -m producers crawl`: the command (producers.cli) exits with them, and the crawler service
(producers.service) reads its child's exit code by them."""

from __future__ import annotations

EXIT_OK = 0                # done
EXIT_ERROR = 1             # error (the warehouse failed, ...)
EXIT_CONFIG = 2            # configuration error
EXIT_SOURCES_FAILED = 3    # the web sources failed: nothing stored, try again later
EXIT_UNKNOWN_CITY = 4      # no city with that id
EXIT_INTERRUPTED = 5       # SIGTERM/SIGINT: the city's status is left as it was
