"""edge/malloc.py: the streaming edge keeps freed heap (no brk pair per read)."""
from __future__ import annotations

import os
import subprocess
import sys

CODE = "from edge.malloc import keep_freed_memory; print(keep_freed_memory())"


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | env_extra
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          env=env, timeout=30, check=True).stdout.strip()


def test_glibc_malloc_is_tuned_unless_the_operator_tuned_it():
    assert _run({}) == "True"                 # this box's libc is glibc
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}) == "False"
