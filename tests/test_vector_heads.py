"""The head-packet features (opcode and ACK filters, first-N sequence, entropy) are computed for many flows
at once from the plugin's head columns; on random heads they must equal the flow-by-flow definitions they
replaced, written out here."""

from __future__ import annotations

import numpy as np
import pytest

from vpnid.features.vectors import ACK_BINS, HEAD, NS, _head_features


def opcode_filter_one(opcodes: np.ndarray) -> list[float]:
    distinct = len(np.unique(opcodes))
    ok = 0.0
    if 4 <= distinct <= 10:
        seen: set[int] = set()
        resets = set(opcodes[:2].tolist())
        ok = 1.0
        for op in opcodes.tolist():
            if len(seen) >= 4 and op in resets:
                ok = 0.0
                break
            seen.add(op)
    return [float(distinct), ok]


def ack_filter_one(size: np.ndarray) -> list[float]:
    later = np.flatnonzero((size[2:] >= 22) & (size[2:] <= 54))
    if not len(later):
        return [0.0] * (1 + ACK_BINS)
    ack = float(size[2 + later[0]])
    hit = np.abs(size[:HEAD] - ack) <= 16
    bins = np.bincount(np.flatnonzero(hit) // 10, minlength=ACK_BINS)[:ACK_BINS]
    return [ack, *bins.astype(float).tolist()]


def head_one(head: np.ndarray, n_first: int) -> np.ndarray:
    size, direction, ts, opcode = head[:, : max(HEAD, n_first)]
    seq = np.zeros((n_first, 3))
    k = min(n_first, len(size))
    seq[:k, 0] = size[:k]
    seq[:k, 1] = direction[:k]
    seq[1:k, 2] = np.diff(ts[:k]) / NS
    return np.r_[opcode_filter_one(opcode[opcode != 255]), ack_filter_one(size), seq.ravel()]


def entropy_one(hist: np.ndarray) -> float:
    n = hist.sum()
    if not n:
        return 0.0
    q = hist[hist > 0] / n
    return float(-(q * np.log2(q)).sum())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_first", [20, 3, 120])
def test_batched_head_features_equal_the_per_flow_definitions(seed, n_first):
    rng = np.random.default_rng(seed)
    n_flows, width = 60, max(HEAD, n_first)
    final = {"size": np.zeros((n_flows, width), np.int32), "opcode": np.zeros((n_flows, width), np.uint8),
             "dir": np.zeros((n_flows, n_first), np.int8), "ts": np.zeros((n_flows, n_first), np.int64),
             "payloads": np.zeros(n_flows, np.int64), "hist": np.zeros((n_flows, 256), np.uint16)}
    heads = []
    for i in range(n_flows):
        n = int(rng.choice([0, 1, 2, 3, 5, 12, 40, 99, 100, 101, 150]))
        few_opcodes = rng.choice([1, 3, 5, 8, 12, 32])
        head = np.stack([rng.choice([20, 22, 30, 40, 54, 55, 70, 1200], n), rng.choice([1, -1], n),
                         np.cumsum(rng.integers(0, 3 * NS, n)), rng.integers(0, few_opcodes, n)]).astype(np.int64)
        head[3, rng.random(n) < 0.1] = 255
        k, m = min(n, width), min(n, n_first)
        final["size"][i, :k], final["opcode"][i, :k] = head[0, :k], head[3, :k]
        final["dir"][i, :m], final["ts"][i, :m] = head[1, :m], head[2, :m]
        final["payloads"][i] = n
        np.add.at(final["hist"][i], rng.integers(0, 256, int(rng.choice([0, 3, 50, 2000]))), 1)
        heads.append(head)
    block = _head_features(final, n_first)
    for row, head, hist in zip(block, heads, final["hist"]):
        assert row[1:].tobytes() == head_one(head, n_first).tobytes()
        assert row[0] == entropy_one(hist)
