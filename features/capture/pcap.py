"""Classic pcap: the file header, then records walked by a compiled loop that touches only their headers."""

from __future__ import annotations

import collections
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from vpnid.features.capture.chunks import NS_PER_S, new_piece, normalise_linktype, u32
from vpnid.features.capture.sources import MAX_CAPLEN, RELEASE_LAG, Stream, Warn, truncation
from vpnid.features.packets import CaptureError, RawChunk

# Classic pcap (draft-ietf-opsawg-pcap section 4): magic as stored -> (byte order, nanoseconds per tick).
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAP_FILE_HEADER = 24
PCAP_RECORD_HEADER = 16
PCAP_LINKTYPE_MASK = 0xFFFF  # the upper bits of the LinkType field carry FCS information


@dataclass(frozen=True, slots=True)
class _PcapFormat:
    """What a pcap file header says about all of its records."""

    order: str
    tick_ns: int  # 1000 for microsecond files, 1 for nanosecond files
    linktype: int
    max_caplen: int

    @classmethod
    def read(cls, stream: Stream, name: str, order: str, tick_ns: int) -> _PcapFormat:
        header = stream.peek(PCAP_FILE_HEADER)
        if len(header) < PCAP_FILE_HEADER:
            raise CaptureError(
                f"{name}: truncated pcap file header ({len(header)} of {PCAP_FILE_HEADER} bytes)")
        stream.pos += PCAP_FILE_HEADER
        # The header's snaplen is advisory: writers such as dpkt keep 1500 there and still write longer
        # records (offloaded segments), and Wireshark reads them. Only an absurd length means corruption.
        network = struct.unpack_from(order + "I", header, 20)[0]
        return cls(order, tick_ns, normalise_linktype(network & PCAP_LINKTYPE_MASK), MAX_CAPLEN)

    def piece(self, buf: bytes | mmap.mmap, start: int, end: int, starts: np.ndarray, headers: np.ndarray,
              frames: int) -> RawChunk:
        """Columns for the records at `starts`, given their header fields (seconds, fraction, captured
        and original length per row)."""
        u8 = np.frombuffer(buf, np.uint8)
        pos = np.asarray(starts, np.int64)
        seconds, fraction, caplen, wirelen = headers.T
        ts_ns = seconds * NS_PER_S + fraction * self.tick_ns
        return new_piece(u8, start, end, pos + PCAP_RECORD_HEADER, caplen, wirelen, ts_ns,
                      np.full(len(pos), self.linktype, np.int32),
                      np.arange(frames + 1, frames + len(pos) + 1, dtype=np.int64))


def pcap_pieces(stream: Stream, name: str, warn: Warn, max_frames: int, order: str,
                 tick_ns: int) -> Iterator[RawChunk]:
    fmt = _PcapFormat.read(stream, name, order, tick_ns)
    frames = 0

    # A mapped file's pages are handed back RELEASE_LAG pieces behind the one being walked. The walk is
    # not run ahead on a thread of its own: `vpnid.features.stream` already reads and decodes on a worker
    # thread while the flow table works, and a piece walked ahead would be one more piece's pages resident.
    mapped = isinstance(stream.buf, mmap.mmap)
    begun: collections.deque[int] = collections.deque(maxlen=RELEASE_LAG + 1)
    while True:
        start = stream.pos
        begun.append(start)
        stream.release(begun[0] if mapped else None)
        starts, headers, stream.pos, bad_caplen = _walk_pcap(np.frombuffer(stream.buf, np.uint8), start,
                                                             order == ">", fmt.max_caplen, max_frames)
        if len(starts):
            yield fmt.piece(stream.buf, start, stream.pos, starts, headers, frames)
            frames += len(starts)
        if bad_caplen >= 0:
            warn(f"{name}: corrupt record header at frame {frames + 1} (captured length {bad_caplen} "
                 f"exceeds the limit of {fmt.max_caplen} bytes); processed up to it")
            return
        if len(starts) < max_frames and not stream.more_or_warn(warn):
            break
    if not stream.failed:
        yield from _pcap_tail(stream, name, warn, fmt, frames)


@njit(cache=True, nogil=True)
def _walk_pcap(buf: np.ndarray, pos: int, big_endian: bool, max_caplen: int,
               max_records: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Start offsets and header fields (seconds, fraction, captured, original length) of up to
    max_records complete records in buf from pos on, the offset after the last of them, and the captured
    length claimed at that offset when it is corrupt (else -1). Sequential by nature (each record's place
    depends on the one before), hence compiled; the header fields are read while their bytes are in
    the CPU cache, as a later gather would miss it once per record."""
    end = buf.shape[0]
    size = max(0, min(max_records, (end - pos) // PCAP_RECORD_HEADER))
    starts = np.empty(size, np.int64)
    headers = np.empty((size, 4), np.int64)
    n = 0
    while n < size and pos + PCAP_RECORD_HEADER <= end:
        for f in range(4):  # four 32-bit fields
            headers[n, f] = u32(buf, pos + 4 * f, big_endian)
        caplen = headers[n, 2]
        if caplen > max_caplen:
            return starts[:n], headers[:n], pos, caplen
        after = pos + PCAP_RECORD_HEADER + caplen
        if after > end:
            break
        starts[n] = pos
        n += 1
        pos = after
    return starts[:n], headers[:n], pos, -1


def _pcap_tail(stream: Stream, name: str, warn: Warn, fmt: _PcapFormat, frames: int) -> Iterator[RawChunk]:
    """The cut record at the end of the file, if any: yielded short when its header is complete."""
    have = len(stream.buf) - stream.pos
    if have == 0:
        return
    what = f"record at frame {frames + 1}"
    if have < PCAP_RECORD_HEADER:
        warn(truncation(name, what, f"{have} bytes into its {PCAP_RECORD_HEADER}-byte header"))
        return
    header = struct.unpack_from(fmt.order + "4I", stream.buf, stream.pos)
    caplen = header[2]
    yield fmt.piece(stream.buf, stream.pos, len(stream.buf), np.array([stream.pos]), np.array([header], np.int64),
                    frames)
    warn(truncation(name, what, f"{have} bytes into a {PCAP_RECORD_HEADER + caplen}-byte record"))
