"""The lease-log CSV layouts `vpnid leases import --kind` reads, strictly and all or nothing, with the
registry's reader (`registry.csvio.read_table`: UTF-8, line-named errors, formula cells undone).

Times are ISO 8601 (`2026-11-28T23:00:00Z`, `2026-11-28 23:00:00+05:00`; without a zone: UTC), to the
millisecond. An interval holds from its start up to, not including, its end; an empty end is open.

radius   event,time,session_id,subscriber_id,framed_ip
         RADIUS accounting as a row per Acct-Status-Type: event is start, interim-update or stop; a
         session is its Acct-Session-Id, holding framed_ip for subscriber_id (User-Name,
         Calling-Station-Id - whatever the operator keys subscribers by) from its start to its stop.
         A start left without a stop is still open.
dhcp     subscriber_id,address,start,end
         one lease per row (subscriber_id: the client's MAC, client id or account).
cgnat    subscriber_id,private_address,public_address,port_first,port_last,start,end
         one port block per row: the subscriber behind private_address leaves as public_address on
         ports port_first..port_last (both included). The private address is attributed as a lease too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vpnid.classifier.audit.registry.csvio import read_table
from vpnid.classifier.audit.registry.registration import SUBSCRIBER, SUBSCRIBER_RULE

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LAYOUTS = {
    "radius": ("event", "time", "session_id", "subscriber_id", "framed_ip"),
    "dhcp": ("subscriber_id", "address", "start", "end"),
    "cgnat": ("subscriber_id", "private_address", "public_address", "port_first", "port_last", "start", "end"),
}
WHAT = {"radius": "a RADIUS accounting CSV", "dhcp": "a DHCP lease CSV", "cgnat": "a CGNAT port-block CSV"}
EVENTS = ("start", "interim-update", "stop")


@dataclass(frozen=True, slots=True)
class Lease:
    """One interval: `subscriber_id` held `address` (behind CGNAT: the public address, on ports
    port_first..port_last) from start_ms up to end_ms (None: open)."""

    kind: str
    subscriber_id: str
    address: Address
    start_ms: int
    end_ms: int | None
    line: int  # the row that gave it (a RADIUS session: its start)
    port_first: int | None = None
    port_last: int | None = None
    private_address: Address | None = None


class _Problems(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))


def _time(text: str, name: str) -> int:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an ISO 8601 time (e.g. 2026-11-28T23:00:00Z)") from None
    return round((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000)


def _address(text: str, name: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an IPv4 or IPv6 address") from None


def _port(text: str, name: str) -> int:
    if not (text.isdigit() and 0 <= int(text) <= 65535):
        raise ValueError(f"{name} {text!r} is not a port from 0 to 65535")
    return int(text)


def _subscriber(text: str) -> str:
    if not text:
        raise ValueError("subscriber_id is empty")
    if not SUBSCRIBER.fullmatch(text):
        raise ValueError(f"subscriber_id {text!r} {SUBSCRIBER_RULE}")
    return text


def _fields(f: dict[str, str], parsers: dict[str, Callable[[str], object]]) -> dict[str, object]:
    """Each field parsed; every bad one named (_Problems)."""
    out, problems = {}, []
    for name, parse in parsers.items():
        try:
            out[name] = parse(f.get(name, "").strip())
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise _Problems(problems)
    return out


def _interval(f: dict[str, str]) -> tuple[int, int | None]:
    v = _fields(f, {"start": lambda t: _time(t, "start"), "end": lambda t: _time(t, "end") if t else None})
    if v["end"] is not None and v["end"] <= v["start"]:
        raise ValueError(f"end {f['end'].strip()!r} is not after start {f['start'].strip()!r}")
    return v["start"], v["end"]


def read_leases(path: str | Path, kind: str) -> list[Lease]:
    """Every interval of a lease log of `kind` (a key of LAYOUTS), or CsvError naming every bad row."""
    leases: list[Lease] = []
    open_sessions: dict[str, tuple[int, str, Address, int]] = {}  # session -> line, subscriber, ip, start

    def dhcp(line: int, f: dict[str, str]) -> None:
        v = _fields(f, {"subscriber_id": _subscriber, "address": lambda t: _address(t, "address"),
                        "interval": lambda _t: _interval(f)})
        leases.append(Lease("dhcp", v["subscriber_id"], v["address"], *v["interval"], line))

    def cgnat(line: int, f: dict[str, str]) -> None:
        v = _fields(f, {"subscriber_id": _subscriber,
                        "private_address": lambda t: _address(t, "private_address"),
                        "public_address": lambda t: _address(t, "public_address"),
                        "port_first": lambda t: _port(t, "port_first"), "port_last": lambda t: _port(t, "port_last"),
                        "interval": lambda _t: _interval(f)})
        if v["port_last"] < v["port_first"]:
            raise ValueError(f"port_last {v['port_last']} is below port_first {v['port_first']}")
        leases.append(Lease("cgnat", v["subscriber_id"], v["public_address"], *v["interval"], line,
                            v["port_first"], v["port_last"], v["private_address"]))

    def radius(line: int, f: dict[str, str]) -> None:
        def event(t: str) -> str:
            if t.lower() not in EVENTS:
                raise ValueError(f"event {t!r} is not one of {', '.join(EVENTS)}")
            return t.lower()

        def session(t: str) -> str:
            if not t:
                raise ValueError("session_id is empty")
            return t

        v = _fields(f, {"event": event, "time": lambda t: _time(t, "time"), "session_id": session,
                        "subscriber_id": _subscriber, "framed_ip": lambda t: _address(t, "framed_ip")})
        sid, at = v["session_id"], v["time"]
        if v["event"] == "start":
            if sid in open_sessions:
                raise ValueError(f"session {sid!r} starts again (it started on line {open_sessions[sid][0]} and "
                                 "has not stopped)")
            open_sessions[sid] = (line, v["subscriber_id"], v["framed_ip"], at)
            return
        if sid not in open_sessions:
            raise ValueError(f"{v['event']} of session {sid!r}, which has no start earlier in the file")
        start_line, subscriber, ip, start = open_sessions[sid]
        if (subscriber, ip) != (v["subscriber_id"], v["framed_ip"]):
            raise ValueError(f"session {sid!r} started on line {start_line} for {subscriber} at {ip}, not "
                             f"{v['subscriber_id']} at {v['framed_ip']}")
        if at < start:
            raise ValueError(f"time {f['time'].strip()!r} is before the session's start on line {start_line}")
        if v["event"] == "stop":
            del open_sessions[sid]
            leases.append(Lease("radius", subscriber, ip, start, at if at > start else start + 1, start_line))

    row = {"radius": radius, "dhcp": dhcp, "cgnat": cgnat}[kind]
    read_table(path, WHAT[kind], LAYOUTS[kind], (), row)
    leases += [Lease("radius", sub, ip, start, None, line) for line, sub, ip, start in open_sessions.values()]
    return leases
