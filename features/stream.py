"""Capture file -> ended flows: the read/decode/flow-table loop that classification and feature
extraction share, so both see exactly the same flows."""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Callable, Iterator

from vpnid.features.capture import read_chunks
from vpnid.features.decode import Reassembler, decode
from vpnid.features.flows import Flow, FlowTable
from vpnid.features.packets import PacketTable, RawChunk

Warn = Callable[[str], None]
GC_THRESHOLD = 100_000  # allocations between first-generation collections while a capture runs


def packet_tables(path: str, chunk_frames: int, counters: dict[str, int], warn: Warn,
                  eager: bool = False, linktype_note: bool = True) -> Iterator[tuple[RawChunk, PacketTable]]:
    """Captured and decoded chunks of one capture; frame and decoder counters are added to `counters`
    (`eager`: see `read_chunks`; `linktype_note`: warn about frames of unsupported link types)."""
    reassembler = Reassembler()
    for chunk in read_chunks(path, chunk_frames=chunk_frames, warn=warn, eager=eager):
        counters["frames"] = counters.get("frames", 0) + len(chunk)
        table = decode(chunk, reassembler)
        for k, v in table.stats.items():
            counters[k] = counters.get(k, 0) + int(v)
        yield chunk, table
    for k, v in counters.items():
        if linktype_note and k.startswith("linktype_") and v:
            warn(f"{path}: {v} frames with unsupported link type {k.removeprefix('linktype_')} skipped")


def flows_of(path: str, table: FlowTable, chunk_frames: int, counters: dict[str, int],
             warn: Warn, *, close: bool = True, eager: bool = False,
             on_chunk: Callable[[RawChunk], None] | None = None) -> Iterator[list[Flow]]:
    """Batches of ended flows of one capture, one per chunk, in the order the flow table ends them: the
    one read -> decode -> flow table loop (classification, feature extraction and frame collection all
    run through it). `close=False` leaves the flows still open at the end in `table`, for the next
    rotated file; `on_chunk` is shown each captured chunk just before its packets go to the table (a
    plugin that needs the frames themselves)."""
    tables = packet_tables(path, chunk_frames, counters, warn, eager, linktype_note=on_chunk is None)
    thresholds = gc.get_threshold()
    # The flow table allocates a few objects per flow, nearly all long-lived until the flow ends: with the
    # default first-generation threshold (700) the collector walks them again and again (a third of the
    # time on short flows). Collections still run, only less often; the threshold is restored after.
    gc.set_threshold(max(thresholds[0], GC_THRESHOLD), *thresholds[1:])
    try:
        for raw, t in tables if eager else _ahead(tables):
            if on_chunk is not None:
                on_chunk(raw)
            table.add(t)
            yield table.drain()
        if close:
            yield table.close()
    finally:
        gc.set_threshold(*thresholds)


_END = object()


def _ahead(items: Iterator[tuple[RawChunk, PacketTable]]) -> Iterator[tuple[RawChunk, PacketTable]]:
    """`items`, produced one ahead on a worker thread: the next chunk is read and decoded while the
    flow table works on this one (much of decoding runs in NumPy without the GIL), in the same order
    and with the same results. An exception on the worker is raised here, where it would have been.
    Not for live captures (`eager`), whose chunks should be read only when the table asks.

    The worker starts on a chunk only once the one before was taken, so at most one finished chunk
    waits: two chunks are alive at a time, not three (their mapped pages and decoded columns are most
    of the peak memory; see `RELEASE_LAG` in `vpnid.features.capture.sources`)."""
    handoff: queue.Queue = queue.Queue(1)
    taken = threading.Semaphore(1)  # the worker may make one chunk per chunk taken
    stop = threading.Event()

    def wait_taken() -> bool:
        while not stop.is_set():
            if taken.acquire(timeout=0.1):
                return True
        return False

    def work() -> None:
        try:
            while wait_taken():
                item = next(items, _END)
                handoff.put(item)  # never blocks: the consumer took the item before
                if item is _END:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            handoff.put(e)

    worker = threading.Thread(target=work, name="vpnid-decode", daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            taken.release()
            yield item
    finally:
        stop.set()  # a consumer that stops early lets the worker end after its current chunk
