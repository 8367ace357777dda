"""A minimal BitTorrent HTTP tracker (BEP 3, compact peer lists of BEP 23): ``BIND PORT``.

The lab's two Transmission clients find each other through it, as real swarms do through a
tracker; there is no DHT or local peer discovery between namespaces without a route out. Every
announce registers the caller's address and ``port`` and answers with the other peers. Stdlib only:
it runs as a script inside the server namespace.
"""
from __future__ import annotations

import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

INTERVAL_S = 30
PEERS: dict[bytes, set[tuple[str, int]]] = {}  # info_hash -> (address, port)


def bencode(value: object) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"
    raise TypeError(type(value))


class Announce(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True, encoding="latin-1")
        info_hash = query["info_hash"][0].encode("latin-1")
        me = (self.client_address[0], int(query["port"][0]))
        swarm = PEERS.setdefault(info_hash, set())
        swarm.add(me)
        others = b"".join(socket.inet_aton(ip) + port.to_bytes(2, "big") for ip, port in swarm if (ip, port) != me)
        body = bencode({b"interval": INTERVAL_S, b"peers": others})
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Announce)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
