"""The flow record: the one row every output, evaluation, registry check and report joins on."""

from __future__ import annotations

import base64
import hashlib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from itertools import chain
from operator import attrgetter

import numpy as np
import pyarrow as pa

from vpnid.classifier.running.community import ICMP_PROTOS, PORT_PROTOS, community_id
from vpnid.features.flows import NS, Flow, flow_id
from vpnid.features.packets import address_text, transport_name


@dataclass(slots=True)
class FlowRecord:
    """One labelled flow. Field names are the JSONL/CSV column names (documented in the README)."""

    pcap: str  # capture path as given
    flow_id: str  # stable id for `explain` and reports: same capture bytes, same id
    community_id: str | None  # Community ID v1, to join with Zeek/Suricata logs (None for ICMP)
    transport: str
    src_ip: str  # initiator
    src_port: int
    dst_ip: str
    dst_port: int
    first_seen: float  # epoch seconds
    last_seen: float
    src2dst_packets: int
    dst2src_packets: int
    src2dst_bytes: int  # IP bytes (header included) of the innermost IP packet
    dst2src_bytes: int
    label: str  # openvpn | wireguard | ipsec | none | another tunnel family
    confidence: float
    method: str  # signature | model | none: what decided the label
    evidence: list[str]
    verdict_packet: int | None  # flow packet number at which the label was decided
    end_reason: str  # idle | active | fin | rst | end_of_capture | evicted
    # `features.risks` names any dissector raised (sorted): properties worth a look, never a label.
    risks: list[str] = field(default_factory=list)
    # Set only by runs that cross-check a registry (`classify --db`, trials); None for non-tunnel flows.
    registry: str | None = None  # registered | unregistered | expired | suspended | revoked | protocol_mismatch
    registration_id: str | None = None  # the registration that decided `registry`
    # Set only by runs that attribute flows through lease logs (trials): the subscriber holding the client
    # end at first_seen (`vpnid.classifier.audit.leases`); None when unknown or ambiguous.
    subscriber_id: str | None = None

    def as_dict(self) -> dict:
        """Field name -> value; shallow (the evidence and risk lists are the record's own), as output needs
        no copy and `dataclasses.asdict` deep-copies at several µs per record."""
        return {name: getattr(self, name) for name in FIELDS}


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(FlowRecord))
REGISTRY_FIELDS = ("registry", "registration_id", "subscriber_id")
# Fields that hold text from outside vpnid's vocabulary: a file name, evidence (which may quote what a packet
# or the registry said), and a registration or subscriber id from the registry or a lease log. Writers treat
# them as untrusted text.
TEXT_FIELDS = ("pcap", "evidence", "registration_id", "subscriber_id")


def output_fields(with_registry: bool) -> tuple[str, ...]:
    """JSONL/CSV columns: the registry columns only when a registry was checked, so output without one
    keeps its documented shape."""
    return FIELDS if with_registry else tuple(f for f in FIELDS if f not in REGISTRY_FIELDS)


def base_record(pcap: str, flow: Flow) -> dict:
    """Every record field that does not depend on labelling."""
    src_ip, dst_ip = address_text(flow.src), address_text(flow.dst)
    return {
        "pcap": pcap,
        "flow_id": flow_id(flow),
        "community_id": community_id(flow.proto, flow.src, flow.sport, flow.dst, flow.dport),
        "transport": transport_name(flow.proto),
        "src_ip": src_ip,
        "src_port": flow.sport,
        "dst_ip": dst_ip,
        "dst_port": flow.dport,
        "first_seen": flow.first_ns / NS,
        "last_seen": flow.last_ns / NS,
        "src2dst_packets": flow.packets[0],
        "dst2src_packets": flow.packets[1],
        "src2dst_bytes": flow.bytes[0],
        "dst2src_bytes": flow.bytes[1],
        "end_reason": flow.end_reason,
    }


# ---------------------------------------------------------------------------------------------- batches
# Records leave the pipeline as Arrow record batches (one per drained group of flows), built column by
# column: no FlowRecord and no dict per flow. Flow ids and Community IDs are packed and encoded with NumPy
# for the whole batch; only the hash itself runs per row (hashlib, in C). Text columns of few distinct values
# (transports, addresses) are encoded once per value and gathered.

_B32 = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", np.uint8)
_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", np.uint8)
_V4 = np.frombuffer(b"\x00" * 10 + b"\xff\xff", np.uint8)


def _pack(cols: list[np.ndarray]) -> np.ndarray:
    """Rows of bytes (n, total width) from per-row byte columns (n, w_i) uint8."""
    return np.ascontiguousarray(np.concatenate(cols, axis=1)) if cols else np.zeros((0, 0), np.uint8)


def _be(values: np.ndarray, width: int) -> np.ndarray:
    """Big-endian bytes of non-negative (or, for width 8, two's complement) integers: (n, width) uint8."""
    v = np.asarray(values, np.int64).astype(f">i{width}" if width == 8 else f">u{width}")
    return v.view(np.uint8).reshape(len(values), width)


def flow_ids(proto: np.ndarray, src: np.ndarray, sport: np.ndarray, dst: np.ndarray, dport: np.ndarray,
             first_ns: np.ndarray) -> pa.Array:
    """`vpnid.features.flows.flow_id` for n flows (src/dst: (n, 16) uint8), as an Arrow string array."""
    n = len(proto)
    if not n:
        return _fixed_width_array(np.zeros((0, 17), np.uint8))
    rows = _pack([np.asarray(proto, np.uint8)[:, None], src, _be(sport, 2), dst, _be(dport, 2), _be(first_ns, 8)])
    width = rows.shape[1]
    buf = rows.tobytes()
    digests = b"".join([hashlib.blake2b(buf[i:i + width], digest_size=10).digest() for i in range(0, n * width, width)])
    d = np.frombuffer(digests, np.uint8).reshape(n, 10)
    bits = np.unpackbits(d, axis=1).reshape(n, 16, 5)  # 80 bits -> 16 base32 digits
    idx = bits @ np.array([16, 8, 4, 2, 1], np.uint8)
    out = np.empty((n, 17), np.uint8)
    out[:, 0] = ord("F")
    out[:, 1:] = _B32[idx]
    return _fixed_width_array(out)


def community_ids(proto: np.ndarray, src: np.ndarray, sport: np.ndarray, dst: np.ndarray,
                  dport: np.ndarray) -> pa.Array:
    """`vpnid.classifier.running.community.community_id` for n flows (src/dst: (n, 16) uint8), as an Arrow
    string array (null where the transport has none: ICMP)."""
    n = len(proto)
    out = np.empty((n, 30), np.uint8)  # "1:" and 28 base64 characters
    out[:, :2] = np.frombuffer(b"1:", np.uint8)
    done = np.zeros(n, bool)
    proto = np.asarray(proto, np.int64)
    sport, dport = np.asarray(sport, np.int64), np.asarray(dport, np.int64)
    v4 = (src[:, :12] == _V4).all(axis=1) & (dst[:, :12] == _V4).all(axis=1)
    ported = np.isin(proto, list(PORT_PROTOS))
    todo = ~np.isin(proto, list(ICMP_PROTOS))
    for four in (True, False):
        sel = np.flatnonzero(todo & (v4 == four))
        if not len(sel):
            continue
        a, b = (src[sel, 12:], dst[sel, 12:]) if four else (src[sel], dst[sel])
        pa_, pb = sport[sel], dport[sel]
        # (dst, dport) < (src, sport) for ported transports, dst < src otherwise: swap to the lower first
        diff = a != b
        first = np.argmax(diff, axis=1)
        r = np.arange(len(sel))
        addr_lt = diff.any(axis=1) & (b[r, first] < a[r, first])
        addr_eq = ~diff.any(axis=1)
        swap = addr_lt | (ported[sel] & addr_eq & (pb < pa_))
        lo = np.where(swap[:, None], b, a)
        hi = np.where(swap[:, None], a, b)
        plo, phi = np.where(swap, pb, pa_), np.where(swap, pa_, pb)
        z = np.zeros((len(sel), 1), np.uint8)
        head = [np.full((len(sel), 2), 0, np.uint8), lo, hi, proto[sel].astype(np.uint8)[:, None], z]
        for has_ports in (True, False):
            part = np.flatnonzero(ported[sel] == has_ports)
            if not len(part):
                continue
            cols = [c[part] for c in head] + ([_be(plo[part], 2), _be(phi[part], 2)] if has_ports else [])
            rows = _pack(cols)
            width = rows.shape[1]
            buf = rows.tobytes()
            # 20-byte digests padded to 21: each encodes to exactly 28 base64 characters, the last one
            # (from the pad byte) replaced by '=' as in the unpadded encoding.
            digests = b"".join([hashlib.sha1(buf[i:i + width]).digest() + b"\0"
                                for i in range(0, len(part) * width, width)])
            rows = sel[part]
            out[rows, 2:] = np.frombuffer(base64.b64encode(digests), np.uint8).reshape(len(part), 28)
            out[rows, 29] = ord("=")
            done[rows] = True
    return _fixed_width_array(out, done)


def _fixed_width_array(rows: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow string array of ASCII rows (n, width) uint8, built from their bytes; rows not `valid` are
    null (and hold no bytes)."""
    n, width = rows.shape
    valid = np.ones(n, bool) if valid is None else valid
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(valid * np.int32(width), out=offsets[1:])
    data = rows.tobytes() if valid.all() else rows[valid].tobytes()
    return pa.Array.from_buffers(pa.string(), n, [_validity(valid), pa.py_buffer(offsets), pa.py_buffer(data)],
                                 int(n - valid.sum()))


def _address_texts(addrs: np.ndarray) -> pa.Array:
    """`address_text` of each row of `addrs` (n, 16) uint8, as an Arrow string array: each distinct address
    of the batch written once (a batch's flows share their hosts). Not kept across batches: a cache that
    lives as long as the run grows with the capture's hosts (to ~30 MB at 200,000 addresses), which a batch
    does not."""
    distinct, index = np.unique(addrs.view("V16").ravel(), return_inverse=True)
    return _taken([address_text(a.tobytes()) for a in distinct], index)


def _taken(texts: list[str], index: np.ndarray) -> pa.Array:
    """The string array whose row i is texts[index[i]]: a column of few distinct values, each encoded once
    and its bytes gathered with NumPy (Arrow's `take` would load pyarrow.compute, ~18 MB resident)."""
    encoded = [t.encode() for t in texts]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    starts = np.cumsum(lengths) - lengths
    sizes = lengths[index]
    offsets = np.zeros(len(index) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    at = np.repeat(starts[index] - offsets[:-1], sizes) + np.arange(offsets[-1])
    data = np.frombuffer(b"".join(encoded), np.uint8)[at]
    return pa.Array.from_buffers(pa.string(), len(index), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def record_batch(pcaps: list[str], flows: Sequence[Flow], labels: dict[str, list],
                 with_registry: bool = False) -> pa.RecordBatch:
    """The records of `flows` (each with its capture path; `labels`: the labelling columns,
    `vpnid.classifier.labelling.labels.label_columns`) as one Arrow record batch of
    `records_schema(with_registry)`, column by column."""
    n = len(flows)
    # The integer fields of every flow, read by C iterators (attrgetter, chain) straight into arrays.
    ints = np.fromiter(chain.from_iterable(map(_INTS, flows)), np.int64, 5 * n).reshape(n, 5)
    counts = np.fromiter(chain.from_iterable(chain.from_iterable(map(_COUNTS, flows))), np.int64,
                         4 * n).reshape(n, 4)
    proto, sport, dport, first_ns, last_ns = (ints[:, k] for k in range(5))
    src = np.frombuffer(b"".join(map(_SRC, flows)), np.uint8).reshape(n, 16)
    dst = np.frombuffer(b"".join(map(_DST, flows)), np.uint8).reshape(n, 16)
    protos, proto_index = np.unique(proto, return_inverse=True)
    addresses = _address_texts(np.concatenate([src, dst]))
    cols = {
        "pcap": pcaps,
        "flow_id": flow_ids(proto, src, sport, dst, dport, first_ns),
        "community_id": community_ids(proto, src, sport, dst, dport),
        "transport": _taken([transport_name(p) for p in protos.tolist()], proto_index),
        "src_ip": addresses.slice(0, n),
        "src_port": sport,
        "dst_ip": addresses.slice(n),
        "dst_port": dport,
        # Python's int / int is correctly rounded; NumPy would round the int64 to float64 first.
        "first_seen": [t / NS for t in first_ns.tolist()],
        "last_seen": [t / NS for t in last_ns.tolist()],
        "src2dst_packets": counts[:, 0],
        "dst2src_packets": counts[:, 1],
        "src2dst_bytes": counts[:, 2],
        "dst2src_bytes": counts[:, 3],
        "end_reason": list(map(_END_REASON, flows)),
        **labels,
    }
    if with_registry:
        cols["registry"] = [None] * n
        cols["registration_id"] = [None] * n
    schema = records_schema(with_registry)
    return pa.RecordBatch.from_arrays([c if isinstance(c := cols[f.name], pa.Array) else arrow_array(c, f.type)
                                       for f in schema], schema=schema)


_INTS = attrgetter("proto", "sport", "dport", "first_ns", "last_ns")
_COUNTS = attrgetter("packets", "bytes")
_SRC, _DST, _END_REASON = attrgetter("src"), attrgetter("dst"), attrgetter("end_reason")


# Arrow arrays straight from their buffers: `pa.array` imports pandas on its first call (~47 MB resident
# for the rest of the run) to ask whether its argument is a pandas object; a record column never is.
def _validity(valid: np.ndarray) -> pa.Buffer | None:
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def _bool_array(values: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(np.packbits(values, bitorder="little"))])


def _int64_values(values: pa.Array) -> np.ndarray:
    """The values of an int64 array without nulls, as a view of its buffer (`to_numpy` imports pandas)."""
    assert values.type == pa.int64() and values.null_count == 0
    return np.frombuffer(values.buffers()[1], np.int64)[values.offset:values.offset + len(values)]


def _string_array(values: list) -> pa.Array:
    n = len(values)
    valid = np.fromiter((v is not None for v in values), bool, n) if None in values else np.ones(n, bool)
    texts = values if valid.all() else ["" if v is None else v for v in values]
    joined = "".join(texts)
    if joined.isascii():  # one encode for the column; each value's length in bytes is its length
        data, lengths = joined.encode(), map(len, texts)
    else:
        encoded = [v.encode() for v in texts]
        data, lengths = b"".join(encoded), map(len, encoded)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.fromiter(lengths, np.int64, n), out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), n, [_validity(valid), pa.py_buffer(offsets), pa.py_buffer(data)],
                                 int(n - valid.sum()))


def arrow_array(values: list | np.ndarray, type_: pa.DataType) -> pa.Array:
    """`pa.array(values, type_)` for a record column (int64, float64, string or list of strings; None
    is null), built from buffers."""
    n = len(values)
    if pa.types.is_string(type_):
        return _string_array(values)
    if pa.types.is_list(type_) and pa.types.is_string(type_.value_type) and all(v is not None for v in values):
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(np.fromiter(map(len, values), np.int64, n), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(offsets)]),
                                        _string_array([s for v in values for s in v]), type=type_)
    if type_ in (pa.int64(), pa.float64()):
        dtype = np.int64 if type_ == pa.int64() else np.float64
        if isinstance(values, np.ndarray):
            valid, data = np.ones(n, bool), values.astype(dtype)
        else:
            valid = np.fromiter((v is not None for v in values), bool, n)
            data = np.array([0 if v is None else v for v in values], dtype) if n else np.zeros(0, dtype)
        return pa.Array.from_buffers(type_, n, [_validity(valid), pa.py_buffer(np.ascontiguousarray(data))],
                                     int(n - valid.sum()))
    return pa.array(values, type_)


_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "list[str]": pa.list_(pa.string())}


def records_schema(with_registry: bool = True) -> pa.Schema:
    """FlowRecord's fields as Arrow columns (annotations are strings: `from __future__ import annotations`),
    the registry columns only `with_registry`."""
    cols = []
    for f in fields(FlowRecord):
        if not with_registry and f.name in REGISTRY_FIELDS:
            continue
        base = typing.cast(str, f.type).removesuffix(" | None")
        cols.append(pa.field(f.name, _ARROW_TYPES[base], nullable=True))
    return pa.schema(cols)


def batch_records(batch: pa.RecordBatch) -> list[FlowRecord]:
    """FlowRecords of a record batch (for the consumers that work record by record)."""
    return [FlowRecord(**row) for row in batch.to_pylist()]


def with_risks(data: pa.RecordBatch | pa.Table, risks: frozenset[str]) -> pa.RecordBatch | pa.Table:
    """The rows of `data` whose `risks` list holds any of `risks` (all rows when `risks` is empty):
    one vectorised pass over the flattened lists, whatever the number of rows."""
    if not risks:
        return data
    import pyarrow.compute as pc  # only here: ~9 MB resident, and no other step of a run needs it

    col = data.column("risks")
    lists = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    hit = pc.is_in(pc.list_flatten(lists), value_set=arrow_array(sorted(risks), pa.string()))
    rows = _int64_values(pc.filter(pc.list_parent_indices(lists), hit))
    keep = np.zeros(data.num_rows, bool)
    keep[rows] = True
    return data.filter(_bool_array(keep))
