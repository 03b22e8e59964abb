"""The whole CDN on one machine, as a newcomer runs it: `gslb demo`, then the commands it
prints. dig for two client networks, curl through the answered edge (MISS, then HIT),
the shield absorbing another edge's miss, and a killed edge leaving the answers."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, free_port, load_default, stop, wait_ready, write_config

FRANKFURT, NEW_YORK = "198.51.100.0/24", "192.0.2.0/24"


def dig(cmd: str) -> list[str]:
    argv = shlex.split(cmd.split("#")[0]) + ["+short", "+time=2", "+tries=1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=15).stdout.split()


def curl(edge_ip: str, port: str, path: str) -> dict[str, str]:
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "10",
                          "--resolve", f"www.test.com:{port}:{edge_ip}",
                          f"http://www.test.com:{port}{path}"],
                         capture_output=True, text=True, timeout=15).stdout
    lines = out.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    headers["status"] = lines[0].split()[1] if lines else ""
    return headers


def api(http: int, what: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/{what}", timeout=10) as r:
        return json.load(r)


def edge_view(http: int) -> dict[str, dict]:
    return {e["name"]: e for e in api(http, "edges")["edges"]}


def dashboard_edge_rows(http: int) -> dict[str, list[str]]:
    """The dashboard's edge view in headless chromium: edge name -> its row's cells."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import chromium

    with chromium("--window-size=1400,1200") as driver:
        driver.get(f"http://127.0.0.1:{http}/")
        WebDriverWait(driver, 10).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#edgeview tr[data-customer]'))
        time.sleep(0.5)            # the health tables render too, for the screenshot
        if os.environ.get("GSLB_SCREENSHOT"):
            driver.save_screenshot(os.environ["GSLB_SCREENSHOT"])
        return {row.get_attribute("data-edge"): [c.text for c in
                                                 row.find_elements(By.TAG_NAME, "td")]
                for row in driver.find_elements(By.CSS_SELECTOR, "#edgeview tr[data-customer]")}


def wait_for(what, timeout: float, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    return what()


def demo_config(tmp: Path) -> tuple[Path, list[str]]:
    """data/gslb.yaml with its edges, shield and origin on ports of this test's own, so a
    demo that a developer left running is neither used nor disturbed; and the demo's
    options for the shield and origin."""
    cfg = load_default()
    port, shield, origin = free_port(), free_port(), free_port()
    cfg["checks"]["edge"]["port"] = port
    for site in cfg["sites"].values():
        site["addresses"] = [a if not isinstance(a, dict) else
                             {**a, "probe": f"[::1]:{free_port()}"} for a in site["addresses"]]
    cfg["dashboard"]["edges"] = {
        **{f"edge-{name}": f"http://{site['addresses'][0]}:{port}/metrics"
           for name, site in cfg["sites"].items()},
        "shield-fra": f"http://127.0.0.14:{shield}/metrics"}
    cfg["health"] = {"state_file": str(tmp / "state.json")}
    # every port the demo would take by default is this test's own, so tests can run at
    # once (./dev test runs two processes): HTTPS, and the fleet demo's pebble
    return write_config(tmp, cfg), ["--shield", f"127.0.0.14:{shield}",
                                    "--origin", f"127.0.0.1:{origin}",
                                    "--https-port", str(free_port()),
                                    "--acme", f"127.0.0.1:{free_port()}",
                                    "--acme-admin", f"127.0.0.1:{free_port()}",
                                    "--control", str(tmp / "demo.sock")]     # last


def data_files() -> dict[str, int]:
    """Every file under data/ with its modification time."""
    return {str(p.relative_to(ROOT)): p.stat().st_mtime_ns
            for p in (ROOT / "data").rglob("*") if p.is_file()}


def start_demo(tmp: Path, config: Path, port: int, http: int, options: list[str],
               log: Path, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """`gslb demo` on this test's ports; its banner once every part is up. Fails at once
    (not after a timeout) when a part did not start."""
    proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "demo", "-c", str(config),
                             "--dns", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http}",
                             *options],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=ROOT,
                            env=env)
    banner = []
    for line in proc.stdout:
        banner.append(line.rstrip())
        if line.startswith("Stop with"):
            break
    if proc.poll() is not None or any("NOT RUNNING" in l for l in banner):
        stop(proc)
        raise AssertionError("the demo did not start every part:\n" + "\n".join(banner)
                             + log.read_text())
    wait_ready(port, proc, log)
    return proc, banner


def pids_in(banner: list[str]) -> list[int]:
    return [int(m.group(1)) for l in banner if (m := re.search(r"\(pid (\d+)\)$", l))]


def test_the_demo_end_to_end(tmp_path):
    port, http = free_port(), free_port()
    config, options = demo_config(tmp_path)
    log = tmp_path / "demo.log"
    data_before = data_files()
    proc, banner = start_demo(tmp_path, config, port, http, options, log)
    try:
        text = "\n".join(banner)
        digs = {subnet: next(l.strip() for l in banner if f"+subnet={subnet}" in l)
                for subnet in (FRANKFURT, NEW_YORK)}
        # The health checks must see the edges up before DNS answers with them.
        assert wait_for(lambda: dig(digs[FRANKFURT]) == ["127.0.0.12"], 15), text
        assert dig(digs[NEW_YORK]) == ["127.0.0.11"]
        # The printed explain line explains with the running demo's health.
        assert wait_for(lambda: api(http, "health")["first_round_done"], 15)
        words = shlex.split(next(l for l in banner if " explain " in l))
        out = subprocess.run([sys.executable, "-m", "gslb.cli", *words[1:]], cwd=ROOT,
                             capture_output=True, text=True, timeout=60).stdout
        assert out.startswith(f"health: from the running server at http://127.0.0.1:{http}")
        assert "127.0.0.12 up" in out and "A 127.0.0.12" in out, out

        curl_line = next(l for l in banner if l.strip().startswith("curl -s -o /dev/null"))
        edge_ip, edge_port = re.search(r"www\.test\.com:(\d+):([\d.]+)", curl_line).group(2, 1)
        assert edge_ip == "127.0.0.12"                       # the Frankfurt client's edge
        first, second = curl(edge_ip, edge_port, "/clip.webm"), curl(edge_ip, edge_port,
                                                                     "/clip.webm")
        assert (first["status"], first["x-cache"]) == ("200", "MISS")
        assert (second["status"], second["x-cache"]) == ("200", "HIT")
        assert "shield-fra" in first["via"] and "edge-fra" in first["via"]
        # The New York edge misses too; the shield already has it.
        ny = curl("127.0.0.11", edge_port, "/clip.webm")
        assert (ny["status"], ny["x-cache"]) == ("200", "MISS")
        view = edge_view(http)
        shield = view["shield-fra"]["customers"]["test"]
        assert shield["misses"] == 1 and shield["hits"] >= 1
        assert shield["bytes_from_origin"] == int(first["content-length"])   # one origin fetch
        assert view["edge-fra"]["customers"]["test"]["hits"] >= 1
        rows = dashboard_edge_rows(http)          # the same, as a browser shows it
        assert rows["shield-fra"][1] == "test" and rows["shield-fra"][2].endswith("%")
        assert float(rows["edge-fra"][2].rstrip(" %")) > 0
        # HTTPS as printed: HTTP/2 with the demo's own CA (https is its own cache key,
        # as nginx's default $scheme$proxy_host$request_uri: MISS, then HIT).
        https = shlex.split(next(l for l in banner if "--http2" in l and "https://" in l))
        assert "--cacert" in https and "-k" not in https and "--insecure" not in https
        for cached in ("MISS", "HIT"):
            out = subprocess.run([*https, "--max-time", "10", "-w", "%{http_version}"],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith("HTTP/2 200") and out.stdout.endswith("2"), out.stdout
            assert f"x-cache: {cached}" in out.stdout and "edge-fra" in out.stdout
        # HTTP/3 as printed (the edge's own client: Debian's curl has no HTTP/3).
        words = shlex.split(next(l for l in banner if " h3get " in l))
        assert words[0].endswith("edge") and "--cacert" in words, words
        out = subprocess.run([sys.executable, "-m", "edge.cli", *words[1:]], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        head = out.stdout.splitlines()
        assert head[0] == "HTTP/3 200" and "x-cache: HIT" in head, out.stdout
        assert any(h.startswith("via:") and "edge-fra" in h for h in head), out.stdout

        # Kill the Frankfurt edge: its clients go to the next nearest site (New York).
        pid = int(next(re.search(r"pid (\d+)", l).group(1) for l in banner
                       if l.strip().startswith("edge-fra ")))
        subprocess.run(["kill", "-9", str(pid)], check=True)
        killed = time.monotonic()
        assert wait_for(lambda: dig(digs[FRANKFURT]) == ["127.0.0.11"], 15)
        moved_after = time.monotonic() - killed
        assert moved_after < 2 * 3 + 3          # interval x fall, plus a check's timeout
        assert edge_view(http)["edge-fra"]["error"] == "connection refused"   # seen gone

        # Bring it back with the printed command: the demo starts it as its own child.
        words = shlex.split(next(l for l in banner if "start edge-fra" in l).split("#")[0])
        assert words[0].endswith("gslb") and words[1] == "demo", words
        # ... but not while a stray process holds its port: said so, not reported started.
        with socket.socket() as stray:
            stray.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stray.bind(("127.0.0.12", int(edge_port)))
            stray.listen(1)
            refused = subprocess.run([sys.executable, "-m", "gslb.cli", *words[1:]],
                                     cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1, refused
        assert f"127.0.0.12:{edge_port} already in use by another process" in refused.stdout
        again = subprocess.run([sys.executable, "-m", "gslb.cli", *words[1:]],
                               cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert again.returncode == 0 and "started the fra edge" in again.stdout, again
        assert wait_for(lambda: dig(digs[FRANKFURT]) == ["127.0.0.12"], 20)
        restarted = int(re.search(r"pid (\d+)", again.stdout).group(1))

        # A second demo while this one runs is refused, clearly and at once.
        again = subprocess.run([sys.executable, "-m", "gslb.cli", "demo", "-c", str(config),
                                "--dns", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http}",
                                *options], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "a demo is already running" in again.stderr, again
        elsewhere = [*options[:-1], str(tmp_path / "other.sock")]      # another control socket
        again = subprocess.run([sys.executable, "-m", "gslb.cli", "demo", "-c", str(config),
                                "--dns", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http}",
                                *elsewhere], cwd=ROOT, capture_output=True, text=True,
                               timeout=30)
        assert again.returncode == 1, again
        lines = again.stderr.splitlines()
        assert lines[0].startswith("demo: cannot start: the addresses of 6 part(s) are in use")
        assert any(l.split() == ["gslb", f"127.0.0.1:{port},", f"127.0.0.1:{http},",
                                 f"127.0.0.1:{port}/udp"] for l in lines), lines
        assert "start" not in again.stdout and len(lines) == 7
        assert dig(digs[NEW_YORK]) == ["127.0.0.11"]                  # this one is untouched
    finally:
        stop(proc)
    # Ctrl-C took every part with it, the restarted edge too.
    assert restarted is not None and not os.path.exists(f"/proc/{restarted}")
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids_in(banner))
    assert data_files() == data_before                 # nothing written into data/


def test_the_demo_twice_in_a_row(tmp_path):
    """Stopped, the demo leaves nothing behind: the same ports serve a new demo at once."""
    port, http = free_port(), free_port()
    config, options = demo_config(tmp_path)
    for run in range(2):
        proc, banner = start_demo(tmp_path, config, port, http, options,
                                  tmp_path / f"demo-{run}.log")
        try:
            assert len(pids_in(banner)) == 6, banner     # origin, shield, 3 edges, gslb
            frankfurt = next(l.strip() for l in banner if "+subnet=198.51.100.0/24" in l)
            assert wait_for(lambda: dig(frankfurt) == ["127.0.0.12"], 15)
        finally:
            stop(proc)
        assert proc.returncode == 0
        assert all(not os.path.exists(f"/proc/{pid}") for pid in pids_in(banner))
