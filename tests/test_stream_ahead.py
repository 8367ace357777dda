"""The decode-ahead worker of `features.stream`: same items in the same order, errors raised where they
were, and at most one chunk made ahead of the one in use (each chunk alive costs its mapped pages and
decoded columns)."""

from __future__ import annotations

import threading
import time

import pytest

from vpnid.features.stream import _ahead


def test_items_in_order_and_at_most_one_made_ahead():
    made: list[int] = []

    def items():
        for i in range(20):
            made.append(i)
            yield i

    seen = []
    for item in _ahead(items()):
        time.sleep(0.01)  # the worker has time to run ahead as far as it is allowed
        assert len(made) <= item + 2, f"{len(made)} items made while item {item} is in use"
        seen.append(item)
    assert seen == list(range(20))


def test_worker_error_is_raised_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("bad chunk")

    seen = []
    with pytest.raises(ValueError, match="bad chunk"):
        for item in _ahead(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_consumer_that_stops_early_lets_the_worker_end():
    def items():
        yield from range(1000)

    before = threading.active_count()
    gen = _ahead(items())
    assert next(gen) == 0
    gen.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
