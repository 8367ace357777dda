"""Read pcap / pcapng capture files (optionally gzip-compressed, or streamed on stdin) into `RawChunk`s.

A regular uncompressed file is memory-mapped and walked in place, `chunk_frames` records at a time,
so its bytes are never copied (pages already walked are handed back to the kernel, which keeps peak
memory flat whatever the file size). Compressed files and streams are read in large blocks instead.
Either way the buffer is walked record by record (only record headers are touched: pcap with a
compiled loop, pcapng in Python) and the frames found become a "piece": numpy columns pointing into
the buffer. Pieces are then regrouped into chunks of `chunk_frames` frames, copying bytes only where a
chunk spans two read blocks. Damage at the end of a file (a cut record, a bogus length) ends the read with one warning
and keeps every frame before it; only a file that cannot be a capture at all raises `CaptureError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from vpnid.features.capture.chunks import rechunk
from vpnid.features.capture.pcap import PCAP_MAGICS, pcap_pieces
from vpnid.features.capture.pcapng import SHB_MAGIC, PcapngReader
from vpnid.features.capture.sources import STDIN_NAME, Stream, Warn, decompressed, open_capture, raw_blocks
from vpnid.features.packets import CaptureError, RawChunk

__all__ = ["read_chunks"]


_log = logging.getLogger(__name__)


def read_chunks(
    path: str | os.PathLike, *, chunk_frames: int = 262_144, warn: Warn | None = None, eager: bool = False
) -> Iterator[RawChunk]:
    """Yield the frames of a capture file in chunks of at most `chunk_frames` frames.

    `eager` yields what each read block held without waiting for a full chunk: for live captures, where
    a packet must not wait for the next ones (chunk sizes then depend on how the data arrives).

    `path` "-" reads a stream from stdin. Raises `CaptureError` (before yielding anything) when the
    file cannot be read or is not a capture; damage later in the file goes to `warn` (default: the
    module logger) and ends the read after the last good frame. Each chunk's `data` is a read-only view
    of a read buffer (copied only where a chunk spans two buffers).
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be positive, not {chunk_frames}")
    name = STDIN_NAME if path == "-" else os.fspath(path)
    warn = warn or _log.warning
    with open_capture(path, name) as f:
        stream = Stream.mapped(f) or Stream(decompressed(raw_blocks(f, name), name, warn))
        yield from rechunk(_pieces(stream, name, warn, chunk_frames), chunk_frames, eager)


def _pieces(stream: Stream, name: str, warn: Warn, max_frames: int) -> Iterator[RawChunk]:
    """Pieces of at most `max_frames` frames (exactly that many while a mapped file lasts, so that
    `rechunk` passes them through without copying)."""
    magic = stream.peek(4)
    if magic == SHB_MAGIC:
        return PcapngReader(stream, name, warn, max_frames).pieces()
    if magic in PCAP_MAGICS:
        return pcap_pieces(stream, name, warn, max_frames, *PCAP_MAGICS[magic])
    if len(magic) < 4:
        raise CaptureError(f"{name}: not a capture file (only {len(magic)} bytes)")
    raise CaptureError(f"{name}: not a capture file (unknown magic 0x{magic.hex()})")
