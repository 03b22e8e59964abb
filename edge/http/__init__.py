"""HTTP on the wire: the client-facing server, the origin client, TLS, tunnels, headers."""
