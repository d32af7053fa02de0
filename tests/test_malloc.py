"""malloc.tune: glibc options for the feeding process, and the environment's own settings winning."""

import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PROBE = "import json; from connector import malloc; print(json.dumps(malloc.tune(malloc.FEEDING)))"


def _applied(env: dict) -> dict:
    """What a fresh interpreter applies, with `env` added to an environment free of malloc settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout
    return {int(k): v for k, v in json.loads(out).items()}


@glibc
def test_feeding_process_gets_two_arenas_and_a_fixed_mmap_threshold():
    from connector import malloc

    assert _applied({}) == {malloc.M_ARENA_MAX: 2, malloc.M_MMAP_THRESHOLD: 1 << 20}


@glibc
def test_settings_from_the_environment_win():
    from connector import malloc

    assert malloc.M_ARENA_MAX not in _applied({"MALLOC_ARENA_MAX": "4"})
    assert malloc.M_MMAP_THRESHOLD in _applied({"MALLOC_ARENA_MAX": "4"})
    assert _applied({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == {}
