"""HTTP/3 over QUIC with aioquic: ``serve IP PORT CRT KEY`` or ``get IP PORT CAFILE SIZE[:PAUSE] ...``.

The server answers ``/<n>`` with n random bytes; the client fetches each size on
one connection and sleeps PAUSE seconds after it, so the flow has think times.
"""
from __future__ import annotations

import asyncio
import os
import sys

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent


class Server(QuicConnectionProtocol):
    h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived):
                body = os.urandom(int(dict(e.headers)[b":path"].lstrip(b"/") or 0))
                self.h3.send_headers(e.stream_id, [(b":status", b"200"), (b"content-length", str(len(body)).encode())])
                self.h3.send_data(e.stream_id, body, end_stream=True)
        self.transmit()


class Client(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiting: dict[int, asyncio.Future[None]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for e in self.h3.handle_event(event):
            if isinstance(e, (HeadersReceived, DataReceived)) and e.stream_ended:
                self.waiting.pop(e.stream_id).set_result(None)

    async def get(self, path: str) -> None:
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"server.lab"),
                                   (b":path", path.encode())], end_stream=True)
        self.waiting[sid] = asyncio.get_running_loop().create_future()
        self.transmit()
        await asyncio.wait_for(self.waiting[sid], 30)


async def main(argv: list[str]) -> None:
    role, ip, port = argv[0], argv[1], int(argv[2])
    if role == "serve":
        cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
        cfg.load_cert_chain(argv[3], argv[4])
        await serve(ip, port, configuration=cfg, create_protocol=Server)
        print("ready", flush=True)
        await asyncio.Event().wait()
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="server.lab")
    cfg.load_verify_locations(argv[3])
    async with connect(ip, port, configuration=cfg, create_protocol=Client) as client:
        for item in argv[4:]:
            size, _, pause = item.partition(":")
            await client.get(f"/{size}")
            await asyncio.sleep(float(pause or 0))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
