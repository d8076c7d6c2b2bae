"""The watchfiles peer: ``watchfiles.watch(FOLDER)`` with its default settings.

Prints ``name CLOCK_MONOTONIC_ns`` for every path in every change set, at the
moment watch() hands the set to its user (where a user's code would start).
"""

from __future__ import annotations

import os
import sys
import time

from watchfiles import watch

for changes in watch(sys.argv[1]):
    now = time.monotonic_ns()
    sys.stdout.write("".join(f"{os.path.basename(path)} {now}\n" for _, path in changes))
    sys.stdout.flush()
