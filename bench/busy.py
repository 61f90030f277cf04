"""``busy_core()``: a spinning process at the lowest priority, for ``redis_paths.py --busy``.

On a virtual machine whose idle cores sleep, a loopback round trip also pays for waking
one up. In a loop of Redis commands alone, on the 2-core VM of ``docs/performance.md``,
a raw ``SET NX`` + ``SET`` pair took about 235 µs with the machine otherwise idle and
about 67 µs with this spinner beside it; Redis's own CPU per pair went from 56 to 11 µs.
That wake-up is the same for every row, so it shrinks every ratio to its floor and
hides what the client and the server themselves spend. The spinner runs at ``nice 19``:
anything else that wants the core gets it first.

``compare.py`` does not need it: its PostgreSQL rows, interleaved with the Redis ones,
keep the cores awake (a raw ``SET NX`` took 43 µs there in the same hour). With the
spinner there as well, its Redis rows ran slower (the ``SET NX`` + ``SET`` floor from
80 to 133 µs): the spinner then competes for the cores.
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
