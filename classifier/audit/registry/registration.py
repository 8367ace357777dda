"""A registration of a sanctioned tunnel, its canonical text form, and validation with precise messages.

The text form (one string per field, lists space-separated) is what the CSV files and the database hold;
`parse_registration` turns it into typed values and `Registration.to_fields` back, so a parsed-then-written
registration always comes out in one canonical spelling (that is what makes export → import exact).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

from vpnid.features.families import TUNNEL_FAMILIES

CATEGORIES = ("bank", "embassy", "it_company", "freelancer", "bpo", "software_house", "other")
ANY = "any"  # a registration that covers every tunnel family
PROTOCOLS = (*TUNNEL_FAMILIES, ANY)
STATUSES = ("active", "suspended", "revoked")
# The verdicts of the cross-check, best first (`match` gives them, `overlap` ranks registrations by them).
# Here, not in `match`: the registry commands use them without loading match's NumPy code.
VERDICTS = ("registered", "protocol_mismatch", "expired", "suspended", "revoked", "unregistered")
REGISTERED, PROTOCOL_MISMATCH, EXPIRED, SUSPENDED, REVOKED, UNREGISTERED = range(len(VERDICTS))
# Who a registration names: client networks, or a subscriber as the operator keys it (any of these three;
# the subscriber a lease log attributes a flow to is compared with each). Files from before they existed
# have none of these columns and import unchanged: the columns are optional in a CSV header.
SUBSCRIBER_FIELDS = ("subscriber_id", "phone", "account_id")
REQUIRED_FIELDS = ("registration_id", "organization", "category", "protocol", "client_networks", "server_endpoints",
                   "valid_from", "valid_until", "status", "notes")
FIELDS = (*REQUIRED_FIELDS, *SUBSCRIBER_FIELDS)

# The broadest client network a registration holds without --allow-broad, by IP version: a shorter prefix
# sanctions a whole block of the Internet (0.0.0.0/0 would make every tunnel registered).
BROADEST = {4: 8, 6: 32}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A subscriber id or account id: a RADIUS user name (user@realm), a MAC, an IMSI, an account number.
SUBSCRIBER = re.compile(r"[A-Za-z0-9+][A-Za-z0-9._:@+/-]{0,127}")
SUBSCRIBER_RULE = "must be 1-128 letters, digits or . _ : @ + / - (starting with a letter, digit or +)"
_PHONE = re.compile(r"\+[1-9][0-9]{5,14}")  # E.164
_PHONE_NOISE = re.compile(r"[ ().-]")
T = TypeVar("T")


class RegistrationError(ValueError):
    """One registration is invalid; `problems` holds one message per bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server endpoint: a network and, optionally, one port (None: any port, and portless ESP flows)."""

    network: Network
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        return f"[{self.network}]:{self.port}" if self.network.version == 6 else f"{self.network}:{self.port}"


@dataclass(frozen=True, slots=True)
class Registration:
    registration_id: str
    organization: str
    category: str
    protocol: str
    client_networks: tuple[Network, ...]
    server_endpoints: tuple[Endpoint, ...]
    valid_from: date
    valid_until: date | None  # None: open-ended
    status: str
    notes: str = ""
    subscriber_id: str = ""  # '' : none; see SUBSCRIBER_FIELDS
    phone: str = ""  # E.164, '+' and digits
    account_id: str = ""

    @property
    def subscriber_keys(self) -> tuple[str, ...]:
        """The keys a lease log's subscriber id is compared with (empty: a registration by network only)."""
        return tuple(k for k in (self.subscriber_id, self.phone, self.account_id) if k)

    def to_fields(self) -> dict[str, str]:
        """The canonical text form, keyed by FIELDS in order."""
        return {
            "registration_id": self.registration_id,
            "organization": self.organization,
            "category": self.category,
            "protocol": self.protocol,
            "client_networks": " ".join(map(str, self.client_networks)),
            "server_endpoints": " ".join(map(str, self.server_endpoints)),
            "valid_from": self.valid_from.isoformat(),
            "valid_until": self.valid_until.isoformat() if self.valid_until else "",
            "status": self.status,
            "notes": self.notes,
            "subscriber_id": self.subscriber_id,
            "phone": self.phone,
            "account_id": self.account_id,
        }


def parse_network(text: str) -> Network:
    """A CIDR (a bare address means a single host). Host bits set is an error, not silently masked:
    '10.1.2.3/8' is more likely a typo than a wish to register all of 10/8."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv4 or IPv6 network in CIDR notation") from None
        raise ValueError(f"{text!r} has host bits set (the network is {loose})") from None


def parse_endpoint(text: str) -> Endpoint:
    """`CIDR`, `CIDR:port` (IPv4) or `[CIDR]:port` (brackets needed for IPv6, where ':' is ambiguous)."""
    if text.startswith("["):
        net, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: a bracketed endpoint is written [CIDR]:port")
    elif text.count(":") == 1:
        net, _, port = text.partition(":")
    else:
        return Endpoint(parse_network(text))
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{text!r}: port {port!r} is not a number from 1 to 65535")
    return Endpoint(parse_network(net), int(port))


def _date(text: str, name: str) -> date:
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a date written YYYY-MM-DD") from None


def parse_phone(text: str) -> str:
    """A phone number in E.164 ('+' and 6-15 digits); spaces, dots, dashes and brackets are dropped."""
    canonical = _PHONE_NOISE.sub("", text)
    if not _PHONE.fullmatch(canonical):
        raise ValueError(f"phone {text!r} is not a number written +<country code><number> (E.164, 6-15 digits)")
    return canonical


def _choice(fields: Mapping[str, str], name: str, allowed: tuple[str, ...], problems: list[str]) -> str:
    value = fields.get(name, "").strip().lower()
    if value not in allowed:
        problems.append(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _list(text: str, name: str, parse: Callable[[str], T], problems: list[str]) -> tuple[T, ...]:
    out = []
    for item in text.split():
        try:
            out.append(parse(item))
        except ValueError as e:
            problems.append(f"{name}: {e}")
    return tuple(out)


def parse_registration(fields: Mapping[str, str]) -> Registration:
    """Validate the text form of a registration; every bad field is named in the RegistrationError."""
    problems: list[str] = []
    f = {k: (v or "").strip() for k, v in fields.items()}
    rid = f.get("registration_id", "")
    if not _ID.fullmatch(rid):
        problems.append("registration_id is empty" if not rid else
                        f"registration_id {rid!r} must be 1-64 letters, digits or . _ : - (starting with a "
                        "letter or digit)")
    org = f.get("organization", "")
    if not org:
        problems.append("organization is empty")
    category = _choice(f, "category", CATEGORIES, problems)
    protocol = _choice(f, "protocol", PROTOCOLS, problems)
    status = _choice(f, "status", STATUSES, problems)
    clients = _list(f.get("client_networks", ""), "client_networks", parse_network, problems)
    subscriber, account = f.get("subscriber_id", ""), f.get("account_id", "")
    for name, value in (("subscriber_id", subscriber), ("account_id", account)):
        if value and not SUBSCRIBER.fullmatch(value):
            problems.append(f"{name} {value!r} {SUBSCRIBER_RULE}")
    phone = ""
    if f.get("phone"):
        try:
            phone = parse_phone(f["phone"])
        except ValueError as e:
            problems.append(str(e))
    if not f.get("client_networks") and not (subscriber or account or f.get("phone")):
        problems.append("client_networks is empty and no subscriber is named (give at least one CIDR, or a "
                        "subscriber_id, phone or account_id)")
    servers = _list(f.get("server_endpoints", ""), "server_endpoints", parse_endpoint, problems)
    valid_from = valid_until = None
    try:
        valid_from = _date(f.get("valid_from", ""), "valid_from")
    except ValueError as e:
        problems.append(str(e))
    if f.get("valid_until"):
        try:
            valid_until = _date(f["valid_until"], "valid_until")
        except ValueError as e:
            problems.append(str(e))
    if valid_from and valid_until and valid_until < valid_from:
        problems.append(f"valid_until {valid_until} is before valid_from {valid_from}")
    if problems:
        raise RegistrationError(problems)
    return Registration(rid, org, category, protocol, clients, servers, valid_from, valid_until, status,
                        fields.get("notes") or "", subscriber, phone, account)


def check_breadth(reg: Registration) -> None:
    """RegistrationError if a client network is broader than BROADEST allows."""
    broad = [str(n) for n in reg.client_networks if n.prefixlen < BROADEST[n.version]]
    if broad:
        raise RegistrationError([f"client_networks: {' '.join(broad)} {'is' if len(broad) == 1 else 'are'} broader "
                                 f"than /{BROADEST[4]} (IPv4) or /{BROADEST[6]} (IPv6); pass --allow-broad if "
                                 "that is meant"])
