"""The floor python-hyper's h2 sets under an HTTP/2 hit: the CPU its own framing and
state machines take per 10 KB response, with no socket, no TLS and no edge code.

    python bench/h2floor.py [--requests 20000]

A server H2Connection (the edge's settings: no header validation or normalisation,
the response head pre-encoded as the hit shortcut does, hpackblock.py) answers
GETs from a client H2Connection ten streams at a time, as h2load -m 10 sends them.
Only the server's calls are timed: receive_data of the requests, send_headers +
send_data + data_to_send of the answers, receive_data of the window updates.
Whatever the edge does around them comes on top; compare the total with nginx's
CPU per request in bench/edge.sh --only h2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.http.hpackblock import Encoder, block, encoded  # noqa: E402

REQUEST = [(b":method", b"GET"), (b":path", b"/10k.bin"), (b":scheme", b"https"),
           (b":authority", b"bench.test"), (b"user-agent", b"h2load nghttp2/1.52.0")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/octet-stream"),
            (b"content-length", b"10240"), (b"date", b"Mon, 07 Dec 2026 08:00:00 GMT"),
            (b"via", b"1.1 edge"), (b"cache-status", b"edge; hit; ttl=500"), (b"age", b"3"),
            (b"etag", b'"abc"'), (b"last-modified", b"Mon, 07 Dec 2026 07:00:00 GMT")]


def pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=False,
        normalize_inbound_headers=False, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    server.encoder = Encoder()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                  header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    server.data_to_send()
    client.increment_flow_control_window(1 << 30)
    server.receive_data(client.data_to_send())
    return server, client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    server, client = pair()
    body, head = b"x" * 10240, encoded(block(RESPONSE))
    spent = {"receive": 0.0, "send": 0.0, "window": 0.0}
    clock = time.process_time
    done = 0
    while done < args.requests:
        for _ in range(10):
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        wire = client.data_to_send()
        t0 = clock()
        events = server.receive_data(wire)
        t1 = clock()
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, head)
                server.send_data(event.stream_id, body, end_stream=True)
        out = server.data_to_send()
        t2 = clock()
        for event in client.receive_data(out):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        updates = client.data_to_send()
        t3 = clock()
        server.receive_data(updates)
        spent["window"] += clock() - t3
        spent["receive"] += t1 - t0
        spent["send"] += t2 - t1
        done += 10
    per = {k: v / done * 1e6 for k, v in spent.items()}
    print(f"h2 {h2.__version__}, server side only, per 10 KB response: receive "
          f"{per['receive']:.1f} us, send {per['send']:.1f} us, window updates "
          f"{per['window']:.1f} us; total {sum(per.values()):.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
