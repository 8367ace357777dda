"""Registrations whose verdict a new or changed one can change, for the flows both cover.

Where several registrations cover a flow the best verdict wins (see `match`), so a registration X
whose client networks meet Y's - and whose server endpoints meet too, or either has none - decides
those flows instead of Y wherever X's verdict is better: `0.0.0.0/0` active for `any` turns every
revoked tunnel into a registered one. Whether X can beat Y is decided on the few dates and families
where their verdicts can differ (around each one's validity bounds; each family). An import names Y.

CIDR networks are nested or disjoint, so one sweep over them sorted by (start, widest first) with a
stack of the networks still open finds, for each network, exactly those that hold it. Registrations
naming the same subscriber (one of `subscriber_keys`) meet as networks do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vpnid.classifier.audit.registry.registration import (
    ANY,
    EXPIRED,
    PROTOCOL_MISMATCH,
    PROTOCOLS,
    REGISTERED,
    REVOKED,
    SUSPENDED,
    Endpoint,
    Registration,
)

_STATUS_RANK = {"suspended": SUSPENDED, "revoked": REVOKED}


def _servers_meet(a: Sequence[Endpoint], b: Sequence[Endpoint]) -> bool:
    """Some flow can reach a server end both allow (no endpoints: any server)."""
    return not a or not b or any(
        x.network.version == y.network.version and x.network.overlaps(y.network)
        and (x.port is None or y.port is None or x.port == y.port) for x in a for y in b)


def _rank(reg: Registration, day: int, protocol: str) -> int:
    """The verdict (an index into VERDICTS, lower is better) `reg` gives a flow it covers."""
    if reg.status in _STATUS_RANK:
        return _STATUS_RANK[reg.status]
    if day < reg.valid_from.toordinal() or (reg.valid_until and day > reg.valid_until.toordinal()):
        return EXPIRED
    return REGISTERED if reg.protocol in (ANY, protocol) else PROTOCOL_MISMATCH


def _beats(x: Registration, y: Registration) -> bool:
    """Does `x` give a better verdict than `y` to some flow both cover?"""
    bounds = [d.toordinal() for r in (x, y) for d in (r.valid_from, r.valid_until) if d]
    days = {b + k for b in bounds for k in (-1, 0, 1)}
    return any(_rank(x, d, p) < _rank(y, d, p) for d in days for p in PROTOCOLS if p != ANY)


def overlaps(regs: Iterable[Registration], changed: Iterable[str]) -> dict[str, list[str]]:
    """For each registration id in `changed`: the other registrations whose verdict it changes for
    some flow they both cover."""
    by_id = {r.registration_id: r for r in regs}
    changed = set(changed)
    found: dict[str, set[str]] = {rid: set() for rid in changed}
    for version in (4, 6):
        nets = sorted((int(n.network_address), -int(n.broadcast_address), r.registration_id)
                      for r in by_id.values() for n in r.client_networks if n.version == version)
        stack: list[tuple[int, str]] = []  # (last address, registration) of the networks holding this one
        for start, neg_end, rid in nets:
            while stack and stack[-1][0] < start:
                stack.pop()
            for _, outer in stack:
                for a, b in ((outer, rid), (rid, outer)):
                    if a != b and a in changed:
                        found[a].add(b)
            stack.append((-neg_end, rid))
    by_key: dict[str, list[str]] = {}  # registrations naming the same subscriber cover the same flows
    for r in by_id.values():
        for key in set(r.subscriber_keys):
            by_key.setdefault(key, []).append(r.registration_id)
    for group in by_key.values():
        for a in group:
            if a in changed:
                found[a].update(b for b in group if b != a)
    meeting = {rid: sorted(o for o in found[rid] if _beats(by_id[rid], by_id[o])
                           and _servers_meet(by_id[rid].server_endpoints, by_id[o].server_endpoints))
               for rid in sorted(changed)}
    return {rid: others for rid, others in meeting.items() if others}
