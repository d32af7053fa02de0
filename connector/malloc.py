"""glibc malloc settings for a process that moves megabyte buffers around for hours (no-op elsewhere).

A feeding run builds, per document, a few buffers of 0.1–2 MB (the PDF, its base64, the CDA, the MTOM
body). glibc's defaults suit it badly: each thread gets its own arena, and after the first free of a
large block the mmap threshold rises to that block's size, so later buffers are carved from the arenas
and leave holes there. Measured on a 100,000-document run (4 in flight, schematron off): resident memory
crept from 145 to 177 MB while what was in use stayed at 55–65 MB (see bench/README.md).

Settings already given in the environment (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, …) win: an operator
can still tune the process from systemd's `Environment=`.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
_ENVIRONMENT = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
                M_ARENA_MAX: "MALLOC_ARENA_MAX"}

# The connector's run: two arenas (the main thread builds, the senders mostly wait on the network), and
# blocks of 1 MB or more always mmap'ed, so they go back to the kernel when freed instead of fragmenting.
FEEDING = {M_ARENA_MAX: 2, M_MMAP_THRESHOLD: 1024 * 1024}


def tune(options: dict[int, int]) -> dict[int, int]:
    """Apply the `mallopt` options not already set in the environment; before any thread starts, for
    M_ARENA_MAX to count. Returns those applied ({} without glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return {}
    applied = {}
    for option, value in options.items():
        if _ENVIRONMENT.get(option) in os.environ or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
            continue
        if mallopt(option, value) == 1:
            applied[option] = value
    return applied
