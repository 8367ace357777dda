"""The report's plots, drawn by matplotlib as SVG and embedded as data URIs.

A data URI keeps the report one self-contained file that opens from disk with no server, no network and
no script, and keeps each SVG's ids to itself (several inline SVGs can clash on clip-path ids).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")  # no display: the report is written by a command-line tool

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# One colour per registry verdict, the same in every plot and in the HTML table's badges.
COLOURS = {
    "registered": "#2e7d32",
    "unregistered": "#c62828",
    "expired": "#ef6c00",
    "suspended": "#6a1b9a",
    "revoked": "#4e342e",
    "protocol_mismatch": "#f9a825",
    None: "#9e9e9e",  # not a tunnel: no verdict
}
VERDICT_ORDER = ("registered", "protocol_mismatch", "expired", "suspended", "revoked", "unregistered", None)


def _data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    with plt.rc_context({"svg.hashsalt": "vpnid", "svg.fonttype": "none"}):  # same data, same bytes
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def protocol_mix(mix: Sequence[tuple[str, str | None, int]]) -> str:
    """Flows per label, each bar split by registry verdict (non-tunnel flows have none)."""
    labels = sorted({lab for lab, _, _ in mix}, key=lambda lab: (lab == "none", lab))
    counts = {(lab, verdict): n for lab, verdict, n in mix}
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(labels), 1)))
    left = [0] * len(labels)
    for verdict in VERDICT_ORDER:
        widths = [counts.get((lab, verdict), 0) for lab in labels]
        if any(widths):
            ax.barh(labels, widths, left=left, color=COLOURS[verdict], label=verdict or "not a tunnel")
            left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("flows")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("Protocol mix by registry verdict")
    return _data_uri(fig)


def timeline(rows: Sequence[tuple[str, float, float, str]]) -> str:
    """Flagged tunnels over time: one line per tunnel (row name, first_seen, last_seen, verdict)."""
    names = list(dict.fromkeys(name for name, *_ in rows))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * max(len(names), 1)))
    when = lambda t: datetime.fromtimestamp(t, UTC)  # noqa: E731
    for verdict in VERDICT_ORDER[1:-1]:
        mine = [r for r in rows if r[3] == verdict]
        if not mine:
            continue
        y = [names.index(name) for name, *_ in mine]
        ax.hlines(y, [when(a) for _, a, _, _ in mine], [when(b) for _, _, b, _ in mine],
                  color=COLOURS[verdict], linewidth=5)
        ax.plot([when(a) for _, a, _, _ in mine], y, "o", color=COLOURS[verdict], label=verdict)
    ax.set_yticks(range(len(names)), names, fontsize="small")
    ax.invert_yaxis()
    locator = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("Flagged tunnels over time")
    return _data_uri(fig)


def ranking(items: Sequence[tuple[str, int]], title: str, colour: str = COLOURS["unregistered"]) -> str:
    """A horizontal bar per item (name, flows), largest first as given."""
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * max(len(items), 1)))
    ax.barh([name for name, _ in items], [n for _, n in items], color=colour)
    ax.invert_yaxis()
    ax.set_xlabel("flows")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    return _data_uri(fig)
