"""Score vpnid's labels against a labelled-flows CSV (`vpnid eval`).

The CSV has columns pcap, transport, a_ip, a_port, b_ip, b_port, family and optionally confidence; pcap
paths are relative to the CSV's folder; endpoints are in no particular order. A row whose transport and
a_ip are `*` labels every flow of its capture that no specific row names. A row can match several flow
records (a 5-tuple reused, or split by a timeout): it counts as correct only when all of them carry its
family, and any VPN label on a `none` row is a false positive.
"""

from __future__ import annotations

import csv
import ipaddress
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpnid.classifier.audit.text import shown
from vpnid.classifier.running.records import FlowRecord
from vpnid.features.families import NONE, REFERENCE_FAMILIES
from vpnid.features.packets import TRANSPORT_NAMES, transport_name

REQUIRED = ("pcap", "transport", "a_ip", "a_port", "b_ip", "b_port", "family")
OTHER_VPN = "other_vpn"
UNSCORED = ("unknown", "")


class LabelsError(Exception):
    """The labels CSV is unusable; the message names the file and, where it applies, the line."""


@dataclass(frozen=True, slots=True)
class LabelRow:
    line: int
    pcap: str  # as written in the CSV
    path: Path  # resolved against the CSV's folder
    transport: str
    ends: frozenset[tuple[str, int]]  # the two endpoints, or empty for a whole-capture row
    family: str
    confidence: str


def _transport(name: str) -> str:
    """Records name only common transports and give others as the protocol number: accept a truth
    file's IANA keyword (igmp, sctp, vrrp...) for those, as /etc/protocols knows it."""
    name = name.strip().lower()
    if name in TRANSPORT_NAMES.values() or name.isdigit():
        return name
    try:
        return transport_name(socket.getprotobyname(name))
    except OSError:
        return name


def _endpoint(ip: str, port: str, where: str) -> tuple[str, int]:
    try:
        return str(ipaddress.ip_address(ip.strip())), int(port or 0)
    except ValueError as e:
        raise LabelsError(f"{where}: bad endpoint {ip!r}:{port!r} ({e})") from None


def read_labels(path: str | Path) -> tuple[list[LabelRow], list[str]]:
    """Rows of a labelled-flows CSV, and one message per row that cannot be used (file:line: why).

    A bad row does not stop the rest: third-party truth files have the odd mangled address, and one such
    row should cost one row, not the whole evaluation."""
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise LabelsError(f"{path}: {e.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise LabelsError(f"{path}: not a labelled-flows CSV (missing column {', '.join(missing)})")
        rows, problems = [], []
        for rec in reader:
            where = f"{path}:{reader.line_num}"
            whole = rec["transport"].strip() == "*" and rec["a_ip"].strip() == "*"
            try:
                ends = frozenset() if whole else frozenset(
                    (_endpoint(rec["a_ip"], rec["a_port"], where), _endpoint(rec["b_ip"], rec["b_port"], where)))
            except LabelsError as e:
                problems.append(str(e))
                continue
            rows.append(LabelRow(
                line=reader.line_num,
                pcap=rec["pcap"],
                path=path.parent / rec["pcap"],
                transport="*" if whole else _transport(rec["transport"]),
                ends=ends,
                family=rec["family"].strip().lower(),
                confidence=(rec.get("confidence") or "").strip(),
            ))
    return rows, problems


def trusted(row: LabelRow, trust: str) -> bool:
    """Whether a row's confidence vouches for it: empty, or starting with `trust` (no `trust`: every row)."""
    return not (trust and row.confidence and not row.confidence.startswith(trust))


def matches(truth: str, label: str) -> bool:
    """`other_vpn` in a truth file stands for any tunnel family beyond the three the reference names."""
    if truth == OTHER_VPN:
        return label not in (*REFERENCE_FAMILIES, NONE)
    return truth == label


@dataclass
class FamilyScore:
    rows: int = 0
    correct: int = 0
    predicted: int = 0  # rows of any truth whose prediction was this family
    predicted_right: int = 0

    @property
    def recall(self) -> float | None:
        return self.correct / self.rows if self.rows else None

    @property
    def precision(self) -> float | None:
        return self.predicted_right / self.predicted if self.predicted else None


@dataclass
class Report:
    families: dict[str, FamilyScore] = field(default_factory=lambda: defaultdict(FamilyScore))
    false_positives: list[dict] = field(default_factory=list)
    misses: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)  # rows no flow matched
    untrusted: int = 0
    unscored: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "families": {
                k: {"rows": v.rows, "correct": v.correct, "recall": v.recall, "precision": v.precision}
                for k, v in sorted(self.families.items())
            },
            "false_positives": self.false_positives,
            "misses": self.misses,
            "missing": self.missing,
            "rows_untrusted": self.untrusted,
            "rows_unscored": self.unscored,
            "errors": self.errors,
        }

    @property
    def perfect(self) -> bool:
        return not (self.false_positives or self.misses or self.missing or self.errors)


def _prediction(records: list[FlowRecord]) -> str:
    labels = sorted({r.label for r in records})
    return labels[0] if len(labels) == 1 else "+".join(labels)


def _describe(row: LabelRow, predicted: str, records: list[FlowRecord]) -> dict:
    """A scored unit for the report; a whole-capture row's unit is named by its flow's endpoints."""
    if row.ends:
        transport, ends = row.transport, sorted(row.ends)
    else:
        r = records[0]
        transport, ends = r.transport, [(r.src_ip, r.src_port), (r.dst_ip, r.dst_port)]
    return {
        "line": row.line,
        "pcap": row.pcap,
        "transport": transport,
        "endpoints": [f"{ip}:{port}" for ip, port in ends],
        "family": row.family,
        "predicted": predicted,
        "flow_ids": [r.flow_id for r in records],
    }


def score(rows: list[LabelRow], records_of: Callable[[Path], Iterable[FlowRecord]], trust: str = "DPI") -> Report:
    """Classify each capture named in `rows` once (via `records_of`) and score every trusted row.

    Rows with a confidence column that does not start with `trust` are counted but not scored; so are
    rows whose family is `unknown`.
    """
    report = Report()
    by_pcap: dict[Path, list[LabelRow]] = defaultdict(list)
    for row in rows:
        by_pcap[row.path].append(row)
    for path, prow in by_pcap.items():
        try:
            records = list(records_of(path))
        except Exception as e:  # noqa: BLE001 - one bad capture must not hide the others' scores
            report.errors.append(f"{path}: {e}")
            continue
        by_key: dict[tuple[str, frozenset], list[FlowRecord]] = defaultdict(list)
        for r in records:
            by_key[(r.transport, frozenset(((r.src_ip, r.src_port), (r.dst_ip, r.dst_port))))].append(r)
        named = {(row.transport, row.ends) for row in prow if row.ends}
        units: list[tuple[LabelRow, list[FlowRecord]]] = []
        for row in prow:
            if row.ends:
                units.append((row, by_key.get((row.transport, row.ends), [])))
            else:
                # Sorted by value, not by str() of a frozenset, whose order changes with the hash seed.
                ordered = sorted(by_key.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1])))
                units += [(row, recs) for key, recs in ordered if key not in named]
        for row, recs in units:
            if row.family in UNSCORED:
                report.unscored += 1
                continue
            if not trusted(row, trust):
                report.untrusted += 1
                continue
            _score_unit(report, row, recs)
    return report


def _score_unit(report: Report, row: LabelRow, recs: list[FlowRecord]) -> None:
    fam = report.families[row.family]
    fam.rows += 1
    if not recs:
        report.missing.append(_describe(row, "", recs))
        return
    predicted = _prediction(recs)
    right = all(matches(row.family, r.label) for r in recs)
    fam.correct += right
    report.families[predicted].predicted += 1  # precision is per predicted label
    report.families[predicted].predicted_right += right
    if right:
        return
    if row.family == NONE:
        report.false_positives.append(_describe(row, predicted, recs))
    else:
        report.misses.append(_describe(row, predicted, recs))


def print_report(report: Report, console: Console) -> None:
    t = Table(title="per-family score")
    for col in ("family", "rows", "correct", "recall", "precision"):
        t.add_column(col, justify="right" if col != "family" else "left")
    fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    for fam, s in sorted(report.families.items()):
        t.add_row(fam, str(s.rows), str(s.correct), fmt(s.recall), fmt(s.precision))
    console.print(t)
    for title, items in (("false positives", report.false_positives), ("misses", report.misses),
                         ("rows with no matching flow", report.missing)):
        if items:
            console.print(f"[bold]{title}[/] ({len(items)}):")
            for it in items:
                ends = " <-> ".join(it["endpoints"])
                console.print(f"  line {it['line']}: {shown(it['pcap'])} {it['transport']} {ends}: "
                              f"truth {it['family']}, vpnid {it['predicted'] or '(no flow)'}")
    for e in report.errors:
        console.print(f"[red]capture error:[/] {shown(e)}")
    console.print(f"false positives: {len(report.false_positives)}, misses: {len(report.misses)}, "
                  f"missing: {len(report.missing)}, unscored rows: {report.unscored}, "
                  f"untrusted rows: {report.untrusted}")
