"""``busy_core()``: a spinning process at the lowest priority, for ``--busy`` runs.

On a virtual machine whose idle cores sleep, a loopback round trip also pays for waking
one up. On the 2-core VM of ``docs/performance.md`` a raw ``SET`` took 100 to 120 µs
with the machine otherwise idle and about 30 µs with this spinner beside it. That
wake-up is the same for every row, so it shrinks every ratio to its floor and hides
what the client and the server themselves spend. The spinner runs at ``nice 19``:
anything else that wants the core, Redis and PostgreSQL included, gets it first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SPINNER = "import os\nos.nice(19)\nwhile True: pass"


@contextmanager
def busy_core(enabled: bool = True) -> Iterator[None]:
    """Keep one spinning process alive for the ``with`` block (nothing if not enabled)."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
    try:
        yield
    finally:
        spinner.send_signal(signal.SIGTERM)
        spinner.wait()
