"""etcd killed and restarted in the middle of a write load: every write the API accepted
is there afterwards, the edges serve throughout, and they catch up with what was
written after etcd came back."""
from __future__ import annotations

import threading
import time

from tests.control.fleet import Origin, customer, start_ctl, start_edge, wait_for


def test_etcd_killed_mid_load_loses_nothing_and_edges_catch_up(etcd, tmp_path):
    origin = Origin("one")
    ctl = start_ctl(tmp_path, etcd.url, "--max-customers", "1000")
    edge = start_edge(tmp_path, etcd.url, "edge-a")
    accepted, refused, serving = [], [], []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            status, body, _ = ctl.call("POST", "/api/customers",
                                       customer(f"c{n}", origin.address, f"c{n}.example.com"))
            (accepted if status == 201 else refused).append((n, status))
            n += 1
            time.sleep(0.01)

    def prober() -> None:
        while not stop.is_set():
            serving.append(edge.get("/p", "c0.example.com", timeout=2)[0])
            time.sleep(0.02)

    try:
        assert ctl.call("POST", "/api/customers",
                        customer("c-first", origin.address, "c0.example.com"))[0] == 201
        wait_for(lambda: edge.get("/p", "c0.example.com")[0] == 200)
        threads = [threading.Thread(target=writer), threading.Thread(target=prober)]
        for t in threads:
            t.start()
        wait_for(lambda: len(accepted) >= 10, what="writes before the outage")
        etcd.kill()
        wait_for(lambda: any(s == 503 for _, s in refused), what="503 while etcd is down")
        time.sleep(1.0)
        etcd.start()
        wait_for(lambda: len(accepted) >= 30 and accepted[-1][0] > refused[-1][0],
                 timeout=20, what="writes after the outage")
        stop.set()
        for t in threads:
            t.join(10)
        assert {s for _, s in refused} <= {503, 409}, refused     # 409: c0.example.com taken
        stored = {c["directory"] for c in ctl.call("GET", "/api/customers")[1]["customers"]}
        assert {f"c{n}" for n, _ in accepted} <= stored            # nothing accepted is lost
        assert set(serving) == {200}, sorted(set(serving))          # served throughout
        last = f"c{accepted[-1][0]}.example.com"
        wait_for(lambda: edge.get("/p", last)[0] == 200, what="the edge caught up")
    finally:
        stop.set()
        edge.stop()
        ctl.stop()
        origin.close()
