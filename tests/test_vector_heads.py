"""The head-packet features (opcode and ACK filters, first-N sequence) are computed for many flows at
once; on random heads they must equal the flow-by-flow definitions they replaced, written out here."""

from __future__ import annotations

import numpy as np
import pytest

from vpnid.features.vectors import ACK_BINS, HEAD, NS, _head_features, _State


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


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_first", [20, 3, 120])
def test_batched_head_features_equal_the_per_flow_definitions(seed, n_first):
    rng = np.random.default_rng(seed)
    states, heads, hists = [], [], np.zeros((60, 256), np.int32)
    for _ in range(60):
        n = int(rng.choice([0, 1, 2, 3, 5, 12, 40, 99, 100, 101, 150]))
        few_opcodes = rng.choice([1, 3, 5, 8, 12, 32])
        head = np.stack([rng.choice([20, 22, 30, 40, 54, 55, 70, 1200], n), rng.choice([1, -1], n),
                         np.cumsum(rng.integers(0, 3 * NS, n)), rng.integers(0, few_opcodes, n)]).astype(np.int64)
        head[3, rng.random(n) < 0.1] = 255
        cuts = np.sort(rng.choice(np.arange(1, max(n, 2)), min(3, max(n - 1, 0)), replace=False)) if n > 1 else []
        st = _State()
        st.head = [p for p in np.split(head, cuts, axis=1) if p.shape[1]] if n else []
        hists[len(states), rng.integers(0, 256, 50)] += 1
        states.append(st)
        heads.append(head)
    _head_features(states, hists, n_first)
    for st, head in zip(states, heads):
        assert st.head == []
        assert st.head_features[1:].tobytes() == head_one(head, n_first).tobytes()
