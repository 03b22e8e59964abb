"""edge/_heads.c runs inside every edge worker: a read past a buffer there is a crashed
worker, or worse. This builds it with AddressSanitizer and UndefinedBehaviorSanitizer
and feeds it, in a child Python, the random heads of test_heads.py cut at random
points, plus heads made of pieces repeated up to 30,000 times (status lines, values
and targets past the 64 KiB it reads, more fields than it takes). Any bad access
aborts the child with the sanitizer's report."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import importlib.util, random, sys
spec = importlib.util.spec_from_file_location("edge._heads", sys.argv[1])
heads = importlib.util.module_from_spec(spec)
spec.loader.exec_module(heads)
sys.modules["edge._heads"] = heads
import edge
edge._heads = heads
import tests.edge.test_heads as t
from edge.origin.direct import FLAGGED
t._heads = heads
t.test_random_requests_read_as_llhttp_reads_them()
t.test_random_responses_read_as_llhttp_and_to_client_raw_make_them()
rng = random.Random(11)
for i in range(20000):
    data, head = t.random_response(rng)
    heads.response(data[:rng.randrange(len(data) + 1)], t.SPECIAL, (b"x",), head)
    data = t.random_request(rng)
    heads.request(data[:rng.randrange(len(data) + 1)], FLAGGED)
pieces_r = [b"GET /", b" HTTP/1.1\r\n", b"Host: a\r\n", b"X: ", b"\r\n", b"\r\n\r\n", b":",
            b" ", b"\t", b"\n"]
pieces_s = [b"HTTP/1.1 200 ", b"OK", b"\r\n", b"Content-Length: ", b"12", b"Via: ",
            b"Cache-Status: ", b"\r\n\r\n", b":", b" ", b"Date: x"]
for i in range(1500):
    for pieces, read in ((pieces_r, lambda d: heads.request(d, FLAGGED)),
                         (pieces_s, lambda d: heads.response(d, t.SPECIAL, (b"x",), i & 1))):
        data = b"".join(rng.choice(pieces) * rng.choice([1, 1, 1, 50, 3000, 30000])
                        for _ in range(rng.randrange(1, 12)))
        read(data)
        read(pieces[0] + data)
for n in (99, 100, 101, 500):
    for field in (b"Via: 1.1 a\r\n", b"Cache-Status: a\r\n", b"X: y\r\n"):
        heads.response(b"HTTP/1.1 200 OK\r\n" + field * n + b"Content-Length: 0\r\n\r\n",
                       t.SPECIAL, (), False)
        heads.request(b"GET / HTTP/1.1\r\nHost: a\r\n" + field * n + b"\r\n", FLAGGED)
print("clean")
"""


def _runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert Path(path).is_absolute(), f"gcc has no {name}: install its sanitizer runtime"
    return path


def test_the_c_reader_under_address_sanitizer(tmp_path):
    built = tmp_path / "_heads.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    f"-I{sysconfig.get_paths()['include']}", str(ROOT / "edge" / "_heads.c"),
                    "-o", str(built)], check=True, timeout=120)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "LD_PRELOAD": f"{_runtime('libasan.so')}:{_runtime('libubsan.so')}"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(built)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr[-3000:]
