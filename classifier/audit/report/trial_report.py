"""`vpnid trial report`: one trial as files an analyst can hand on.

    report.html   self-contained (plots are inline SVG, no script, no network): protocol mix, timeline
                  of flagged tunnels, top unregistered endpoints, organisations' and client networks,
                  subscribers (through the lease logs) with flagged tunnels, and
                  every flagged flow with its evidence and the `vpnid explain` command that shows it
    flagged.csv   the flagged flows, one per row (JSONL record fields plus organization, client_network and
                  how the client was attributed to a subscriber: attributed_by, attribution_issue,
                  closest_registration)
    summary.json  the trial's parameters and counts, for scripts
    flagged.pcap  the captured frames of every flagged flow, for Wireshark, from the captures that are
                  still as the trial read them (by sha256); none at all when no capture is
"""

from __future__ import annotations

import csv
import json
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from vpnid.classifier.audit.files import database_files, private_dir, staged
from vpnid.classifier.audit.report import plots
from vpnid.classifier.audit.text import csv_cell
from vpnid.classifier.audit.trials import Capture, FlowResult, Trial, TrialStore, subscriber_view
from vpnid.classifier.running.flowpackets import Frame, flow_frames, write_pcaps
from vpnid.classifier.running.pipeline import Options, Warn

TOP = 15  # rows of the rankings
TIMELINE_ROWS = 40  # tunnels (client -> server) drawn in the timeline, the most active first
TABLE_ROWS = 2000  # flagged flows listed in the HTML; flagged.csv has them all
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("vpnid.classifier.audit.report", "."), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True, slots=True)
class Written:
    files: list[Path]
    flagged_flows: int
    pcap_frames: int
    missing_captures: list[str]  # captures gone or changed since the trial: not in flagged.pcap
    pcap_files: list[Path]  # flagged.pcap (and per link type); none when no capture could be used


def _server(r: dict) -> str:
    host = f"[{r['dst_ip']}]" if ":" in r["dst_ip"] else r["dst_ip"]
    return f"{host}:{r['dst_port']}/{r['transport']}" if r["dst_port"] else f"{host}/{r['transport']}"


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _endpoints(flagged: Sequence[FlowResult]) -> list[dict]:
    """Unregistered server endpoints, by flows, with how many clients used them."""
    flows: Counter[tuple[str, str]] = Counter()
    clients: dict[tuple[str, str], set[str]] = {}
    for res in flagged:
        r = res.record
        if r["registry"] == "unregistered":
            key = (_server(r), r["label"])
            flows[key] += 1
            clients.setdefault(key, set()).add(r["src_ip"])
    return [{"endpoint": e, "label": lab, "flows": n, "clients": len(clients[(e, lab)])}
            for (e, lab), n in flows.most_common(TOP)]


def _networks(flagged: Sequence[FlowResult]) -> list[dict]:
    """Flagged flows by organisation (or unregistered) and client network."""
    flows = Counter((res.organization or "(unregistered)", res.client_network or "?", res.record["registry"],
                     res.record["registration_id"] or "") for res in flagged)
    return [{"organization": org, "network": net, "verdict": v, "registration_id": rid, "flows": n}
            for (org, net, v, rid), n in flows.most_common(TOP)]


def _summary(trial: Trial, mix: Sequence[tuple[str, str | None, int]], flagged: Sequence[FlowResult],
             written: dict, risks: dict[str, int]) -> dict:
    by_label: Counter[str] = Counter()
    by_verdict: Counter[str] = Counter()
    for label, verdict, n in mix:
        by_label[label] += n
        if verdict is not None:
            by_verdict[verdict] += n
    view = subscriber_view(flagged)
    flagged_risks = Counter(risk for res in flagged for risk in res.record.get("risks", ()))
    return {"trial": asdict(trial), "flows_by_label": dict(by_label), "tunnels_by_verdict": dict(by_verdict),
            "flows_by_risk": risks, "flagged_by_risk": dict(sorted(flagged_risks.items())),
            "top_unregistered_endpoints": _endpoints(flagged), "flagged_by_network": _networks(flagged),
            "subscribers": [asdict(u) for u in view.uses],
            "unattributed_flagged": {"flows": view.unattributed, "gaps": view.gaps, "overlaps": view.overlaps},
            **written}


def _pcap(trial: Trial, read: Sequence[Capture], flagged: Sequence[FlowResult], out: Path,
          warn: Warn) -> tuple[list[Path], int, list[str]]:
    """flagged.pcap from the trial's captures, re-read with the trial's flow options, but only from those
    still byte for byte as the trial read them (`read`; empty for a trial from before they were kept):
    another file at the same path would give other frames, or none, under the same flow ids. Without a
    capture to take frames from, no flagged.pcap is written."""
    p = trial.parameters
    opts = Options(idle_timeout=p["idle_timeout"], active_timeout=p["active_timeout"], max_flows=p["max_flows"])
    as_read = {c.path: c for c in read}
    if not read:
        warn(f"trial {trial.name!r} did not record its captures' sha256 (run before vpnid kept them): "
             "flagged.pcap comes from the files now at their paths, unverified")
    wanted: dict[str, dict[str, dict]] = {}
    for res in flagged:
        wanted.setdefault(res.record["pcap"], {})[res.record["flow_id"]] = res.record
    frames: list[Frame] = []
    missing = []
    for pcap, records in wanted.items():
        gone = not Path(pcap).is_file()
        if gone or (read and not (pcap in as_read and as_read[pcap].unchanged())):
            state = "no longer there" if gone else "changed since the trial read it"
            warn(f"{pcap}: capture {state}; its {len(records)} flagged flows are not in flagged.pcap")
            missing.append(pcap)
            continue
        for flow_frames_ in flow_frames(pcap, records, opts, warn).values():
            frames += flow_frames_
    if wanted and len(missing) == len(wanted):
        return [], 0, missing
    return write_pcaps(frames, out / "flagged.pcap"), len(frames), missing


def _csv(flagged: Sequence[FlowResult], path: Path) -> None:
    fields = [*(flagged[0].record if flagged else {}), "organization", "client_network", "attributed_by",
              "attribution_issue", "closest_registration"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(fields)
        for res in flagged:
            d = res.record | {"evidence": " | ".join(res.record["evidence"]),
                              "risks": " | ".join(res.record.get("risks", ())), "organization": res.organization,
                              "client_network": res.client_network, "attributed_by": res.attributed_by,
                              "attribution_issue": res.attribution_issue,
                              "closest_registration": res.closest_registration}
            w.writerow([csv_cell("" if d.get(k) is None else d[k]) for k in fields])


def _explain_command(r: dict, parameters: dict) -> str:
    """The `vpnid explain` command line for a flow, shell-quoted: a capture's name is anyone's text, and
    a pasted `$(...)` must stay part of a file name."""
    return shlex.join(["vpnid", "explain", r["pcap"], "--flow", r["flow_id"],
                       "--idle-timeout", str(parameters["idle_timeout"]),
                       "--active-timeout", str(parameters["active_timeout"])])


def _html(trial: Trial, summary: dict, mix: Sequence[tuple[str, str | None, int]],
          flagged: Sequence[FlowResult]) -> str:
    rows = [(f"{r.record['src_ip']} → {_server(r.record)}", r.record["first_seen"], r.record["last_seen"],
             r.record["registry"]) for r in flagged]
    shown = {name for name, _ in Counter(row[0] for row in rows).most_common(TIMELINE_ROWS)}
    endpoints = summary["top_unregistered_endpoints"]
    figures = {
        "mix": plots.protocol_mix(mix),
        "timeline": plots.timeline([row for row in rows if row[0] in shown]) if flagged else None,
        "endpoints": plots.ranking([(f"{e['endpoint']} {e['label']}", e["flows"]) for e in endpoints],
                                   "Top unregistered endpoints") if endpoints else None,
    }
    table = [{"r": res.record, "organization": res.organization, "network": res.client_network,
              "explain": _explain_command(res.record, trial.parameters),
              "server": _server(res.record), "first": _utc(res.record["first_seen"]),
              "duration": res.record["last_seen"] - res.record["first_seen"]} for res in flagged[:TABLE_ROWS]]
    subscribers = [u | {"first": _utc(u["first_seen"]), "last": _utc(u["last_seen"])} for u in summary["subscribers"]]
    return _ENV.get_template("report.html.j2").render(
        subscribers=subscribers[:TABLE_ROWS], trial=trial, summary=summary, figures=figures, flagged=table, flagged_total=len(flagged),
        colours={k or "none": v for k, v in plots.COLOURS.items()}, generated=_utc(datetime.now(UTC).timestamp()),
        since=_utc(trial.parameters["from"]) if trial.parameters["from"] is not None else None,
        until=_utc(trial.parameters["to"]) if trial.parameters["to"] is not None else None)


def write_report(trials: TrialStore, name: str, out: Path, warn: Warn = lambda _m: None) -> Written:
    """Write the report files of trial `name` into the folder `out` (made, private, if needed), each
    whole or not at all and never through a link planted there (see `files`); OutputError if `out` is
    not a folder or a report file would replace one of the trial's captures or its database. A
    flagged.pcap left by an earlier report is removed when this one has none."""
    with trials.reading():  # one consistent view, even if the trial is being re-run meanwhile
        trial = trials.require(name)
        mix = trials.mix(name)
        risks = trials.risks(name)
        flagged = list(trials.results(name, flagged_only=True))
        read = trials.captures(name)
    private_dir(out)
    protect = [*trial.parameters["captures"], *database_files(trials.store.location)]
    with staged(out, protect) as tmp:
        pcaps, frames, missing = _pcap(trial, read, flagged, tmp, warn)
        pcap_files = [out / p.name for p in pcaps]
        files = [out / "report.html", out / "flagged.csv", out / "summary.json", *pcap_files]
        summary = _summary(trial, mix, flagged, {"files": [p.name for p in files], "flagged_pcap_frames": frames,
                                                 "missing_captures": missing}, risks)
        _csv(flagged, tmp / "flagged.csv")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.html").write_text(_html(trial, summary, mix, flagged), encoding="utf-8")
    if not pcaps and (stale := out / "flagged.pcap").is_file() and not stale.is_symlink():
        stale.unlink()
    return Written(files, len(flagged), frames, missing, pcap_files)
