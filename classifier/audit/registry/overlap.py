"""Registrations that cover the same flows, so that one can change the verdict the other gives.

Where several registrations cover a flow the best verdict wins (see `match`), so a new or changed
registration whose client networks meet another's - and whose server endpoints meet too, or either
has none - can turn that one's revoked or suspended tunnels into registered ones. An import names them.

CIDR networks are nested or disjoint, so one sweep over them sorted by (start, widest first) with a
stack of the networks still open finds, for each network, exactly those that hold it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vpnid.classifier.audit.registry.registration import Endpoint, Registration


def _servers_meet(a: Sequence[Endpoint], b: Sequence[Endpoint]) -> bool:
    """Some flow can reach a server end both allow (no endpoints: any server)."""
    return not a or not b or any(
        x.network.version == y.network.version and x.network.overlaps(y.network)
        and (x.port is None or y.port is None or x.port == y.port) for x in a for y in b)


def overlaps(regs: Iterable[Registration], changed: Iterable[str]) -> dict[str, list[str]]:
    """For each registration id in `changed`: the other registrations covering some of its flows."""
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
                if outer != rid and (outer in changed or rid in changed):
                    found.setdefault(outer, set()).add(rid)
                    found.setdefault(rid, set()).add(outer)
            stack.append((-neg_end, rid))
    meeting = {rid: sorted(o for o in found[rid]
                           if _servers_meet(by_id[rid].server_endpoints, by_id[o].server_endpoints))
               for rid in sorted(changed)}
    return {rid: others for rid, others in meeting.items() if others}
