"""`--scale N` plans: scale 1 is the variant's plan as is; later repetitions vary it (training variety)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from vpnid.pcaps.lab.catalog import VARIANTS
from vpnid.pcaps.lab.traffic import SHAPES
from vpnid.pcaps.lab.variant import VARIETY_MTUS, scaled

PLAN = "interactive:6,bulk:250000,idle:12,voice:4"


def test_scale_one_is_the_plan_unchanged() -> None:
    assert scaled(PLAN, 1) == PLAN


def test_later_repetitions_vary_mix_sizes_and_mtu() -> None:
    items = scaled(PLAN, 3).split(",")
    assert ",".join(items[:4]) == PLAN
    reps = scaled(PLAN, 3).split(",mtu:")[1:]
    assert len(reps) == 2
    for rep in reps:
        mtu, *rest = rep.split(",")
        assert int(mtu) in VARIETY_MTUS
        assert len(rest) == 5  # the plan's four kinds plus one more
        assert Counter(i.partition(":")[0] for i in rest) >= Counter(i.partition(":")[0] for i in PLAN.split(","))
    assert reps[0] != reps[1]
    assert scaled(PLAN, 3) == scaled(PLAN, 3)  # seeded by the plan: a re-run sends the same


def test_another_recording_varies_every_repetition_the_first_too() -> None:
    one, two = scaled(PLAN, 2, recording=1), scaled(PLAN, 2, recording=2)
    assert len(one.split(",mtu:")) == len(two.split(",mtu:")) == 2  # two repetitions, each with its own MTU
    assert one.startswith("mtu:") and not one.startswith(PLAN)
    assert len({one, two, scaled(PLAN, 2)}) == 3
    assert scaled(PLAN, 2, recording=1) == one  # a recording is reproducible


def test_recordings_of_a_variant_have_their_own_seeds() -> None:
    v = VARIANTS[0]
    seeds = {replace(v, recording=k).seed for k in range(4)}
    assert len(seeds) == 4 and v.seed in seeds
    assert replace(v, recording=3).plan(PLAN, 1) == scaled(PLAN, 1, 3)


@pytest.mark.parametrize("plan", sorted({p for v in VARIANTS for p in v.opts.get("plans", (v.opts.get("plan"),)) if p}))
def test_varied_plans_only_use_shapes_the_client_knows(plan: str) -> None:
    for item in scaled(plan, 4).split(","):
        shape, _, arg = item.partition(":")
        assert shape in SHAPES and float(arg) > 0
    if {i.partition(":")[0] for i in plan.split(",")} <= {"keepalive", "idle"}:  # kept-alive plans stay so
        assert {i.partition(":")[0] for i in scaled(plan, 4).split(",")} <= {"keepalive", "idle", "mtu"}
    if "voice" not in plan:  # a proxied (SOCKS) plan must not gain UDP voice
        assert "voice" not in scaled(plan, 4)
