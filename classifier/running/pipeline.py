"""The one assembly point: capture files in, labelled flow records out.

The CLI, evaluation and (later) batch, live and trial runs all call `classify_capture`; none of them
re-implements a step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from vpnid.classifier.labelling.labels import label, label_columns
from vpnid.classifier.running.records import FlowRecord, base_record, record_batch, records_schema
from vpnid.features.dissectors import catalog
from vpnid.features.flows import Flow, FlowTable, FlowTableConfig
from vpnid.features.siblings import SiblingPlugin
from vpnid.features.stream import Warn, flows_of
from vpnid.features.vectors import FeaturePlugin, vectors

if TYPE_CHECKING:  # the matcher (registry and lease code) is loaded only by runs given a registry
    from vpnid.classifier.audit.registry.match import Matcher
    from vpnid.classifier.labelling.judgement import Judgement
    from vpnid.classifier.labelling.model import FlowModel


@dataclass(slots=True)
class Options:
    idle_timeout: float = 120.0
    active_timeout: float = 1800.0
    max_flows: int = 1_000_000
    # Frames per chunk: peak memory stays flat whatever the capture size. 32,768 (not 65,536): peak RSS
    # 342 -> 269 MB on the 2 M-packet short-flow benchmark input, 313 -> 255 MB on the lab one, at the same CPU
    # time. Flows leave as the chunk they end in is done, so in a capture of more than one chunk the record
    # order depends on this size; the records themselves do not (sorted, the output is identical).
    chunk_frames: int = 32_768
    eager: bool = False  # process packets as they arrive instead of in full chunks (live capture)
    matcher: Matcher | None = None  # cross-check tunnel flows against it (records gain registry fields)
    drop_first: int = 0  # withhold each flow's first N packets (mid-flow evaluation)
    model: FlowModel | None = None  # labels flows signatures leave undecided; None: signatures only
    prefilter: bool = True  # False: every dissector on every flow of its transports (the cheap stage's reference)


@dataclass(slots=True)
class CaptureStats:
    """What happened to one capture's packets, for the run summary."""

    frames: int = 0
    packets: int = 0  # decoded IP packets
    flows: int = 0
    evicted: int = 0
    counters: dict[str, int] = field(default_factory=dict)


ORIGIN = "pcap"  # Flow.ext key: the file a flow carried over from an earlier rotated file started in


@dataclass(slots=True)
class Carry:
    """Flows still open at the end of one capture file, for the next file of the same rotation (in time
    order): the flow table itself, dissector state included, so the joined run equals one run over the
    files concatenated. Picklable, so a task on another process or Dask worker can continue it."""

    table: FlowTable | None = None


def _new_table(opts: Options) -> FlowTable:
    model = opts.model
    config = FlowTableConfig(opts.idle_timeout, opts.active_timeout, opts.max_flows, opts.drop_first,
                             prefilter=opts.prefilter)
    plugins = (SiblingPlugin(catalog.ALL),)  # first: a control channel it labels needs no model
    if model:
        plugins += (FeaturePlugin(model.n_first, undecided_only=True, min_packets=model.min_packets),)
    return FlowTable(catalog.ALL, config, plugins=plugins)


def _judgements(flows: list[Flow], opts: Options) -> list[Judgement | None]:
    """The model's judgement of each ended flow signatures left undecided (None: decided, or no model)."""
    model = opts.model
    if model is None:
        return [None] * len(flows)
    out: list[Judgement | None] = [None] * len(flows)
    undecided = [i for i, f in enumerate(flows) if f.verdict is None]
    asked = [i for i in undecided if flows[i].total_packets >= model.min_packets]
    for i, j in zip(asked, model.judge(vectors([flows[i] for i in asked], model.n_first))):
        out[i] = j
    short: dict[int, Judgement] = {}  # one (immutable) judgement per packet count
    for i in undecided:
        if out[i] is None:
            n = flows[i].total_packets
            out[i] = short.get(n) or short.setdefault(n, model.unasked(n))
    return out


def _records(path: str, flows: list[Flow], opts: Options) -> list[FlowRecord]:
    """Records of ended flows; a flow carried over from an earlier file keeps the file it started in."""
    batch = [FlowRecord(**base_record(flow.ext.get(ORIGIN, path), flow), **label(flow, j))
             for flow, j in zip(flows, _judgements(flows, opts))]
    if opts.matcher is not None:  # one vectorised check per drained group, not per flow
        for record, verdict in zip(batch, opts.matcher.check(batch)):
            if verdict is not None:
                record.registry, record.registration_id = verdict.registry, verdict.registration_id
                record.subscriber_id = verdict.subscriber_id
    return batch


def _batch(path: str, flows: list[Flow], opts: Options) -> pa.RecordBatch:
    """The records of ended flows as one Arrow record batch (columns as `records_schema`; the registry
    columns only when a matcher checks them)."""
    if opts.matcher is not None:  # the registry check works on records
        schema = records_schema(True)
        return pa.RecordBatch.from_pylist([r.as_dict() for r in _records(path, flows, opts)], schema=schema)
    return record_batch([flow.ext.get(ORIGIN, path) for flow in flows], flows,
                        label_columns(flows, _judgements(flows, opts)))


def _flow_groups(path: str, opts: Options, warn: Warn, stats: CaptureStats | None, carry: Carry | None,
                 early: Callable[[FlowRecord], None] | None) -> Iterator[list[Flow]]:
    """Groups of ended flows of one capture, as the flow table drains them (see `classify_capture`)."""
    stats = stats if stats is not None else CaptureStats()
    table = carry.table if carry is not None and carry.table is not None else _new_table(opts)
    if carry is not None:
        carry.table = table
    before = dict(table.stats)
    announced: set[int] = set()
    for flows in flows_of(path, table, opts.chunk_frames, stats.counters, warn, close=carry is None,
                          eager=opts.eager):
        stats.flows += len(flows)
        yield flows
        if early is not None:
            announced.difference_update(map(id, flows))
            for flow in table.open.values():
                if flow.verdict is not None and id(flow) not in announced:
                    announced.add(id(flow))
                    early(FlowRecord(**base_record(flow.ext.get(ORIGIN, path), flow), **label(flow)))
    if carry is not None:
        for flow in table.open.values():
            flow.ext.setdefault(ORIGIN, path)
    stats.frames = stats.counters.pop("frames", 0)
    stats.packets = table.stats["packets"] - before["packets"]
    stats.evicted = table.stats["evicted"] - before["evicted"]
    if stats.evicted:
        warn(f"{path}: flow table full ({opts.max_flows} flows): {stats.evicted} flows ended early (evicted)")


def classify_capture(path: str, opts: Options | None = None, *, warn: Warn = lambda _m: None,
                     stats: CaptureStats | None = None, carry: Carry | None = None,
                     early: Callable[[FlowRecord], None] | None = None) -> Iterator[FlowRecord]:
    """Labelled flow records of one capture, yielded as flows end. Raises CaptureError if the file
    cannot be read as a capture.

    With `carry`, the flows open at the end stay in it for the next file of a rotation, and the caller
    ends them with `end_carry` after the last file. `early` is called with a provisional record (no
    end reason yet) as soon as a signature labels a still-open flow (once per flow, checked per chunk).
    """
    opts = opts or Options()
    for flows in _flow_groups(path, opts, warn, stats, carry, early):
        yield from _records(path, flows, opts)


def classify_batches(path: str, opts: Options | None = None, *, warn: Warn = lambda _m: None,
                     stats: CaptureStats | None = None, carry: Carry | None = None) -> Iterator[pa.RecordBatch]:
    """`classify_capture`'s records as Arrow record batches, one per drained group of flows, built column
    by column (no record object per flow): what the JSONL, CSV and Parquet writers take."""
    opts = opts or Options()
    groups = (flows for flows in _flow_groups(path, opts, warn, stats, carry, None) if flows)
    if opts.eager or opts.matcher is not None:  # live: no batch waits for the next chunk; sqlite stays on its thread
        yield from (_batch(path, flows, opts) for flows in groups)
        return
    # A group's batch is built on a second thread while the flow table takes the next chunk: the model's
    # compiled scoring and Arrow's column building release the GIL, so the two overlap on two cores.
    # Ended flows are not touched by the table again, and batches still leave in drain order.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpnid-batch") as pool:
        building: Future[pa.RecordBatch] | None = None
        for flows in groups:
            following = pool.submit(_batch, path, flows, opts)
            if building is not None:
                yield building.result()
            building = following
        if building is not None:
            yield building.result()


def end_carry_batch(carry: Carry, opts: Options | None = None) -> pa.RecordBatch | None:
    """`end_carry` as a record batch (None when nothing was carried)."""
    if carry.table is None:
        return None
    table, carry.table = carry.table, None
    flows = table.close()
    return _batch("", flows, opts or Options()) if flows else None


def end_carry(carry: Carry, opts: Options | None = None) -> list[FlowRecord]:
    """End the flows still open after the last file of a rotation (end of capture)."""
    if carry.table is None:
        return []
    table, carry.table = carry.table, None
    return _records("", table.close(), opts or Options())
