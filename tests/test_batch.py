"""`vpnid batch`, joined rotated files and capture streams on stdin: the same records as `vpnid classify`
on the file, resumable, a local pool and a Dask LocalCluster giving the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from scapy.all import rdpcap, wrpcap

from tests.test_cli import mixed_pcap, vpnid  # noqa: F401  (mixed_pcap is a fixture)
from vpnid.classifier.cli.main import main


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def without_pcap(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "pcap"} for r in records), key=lambda r: r["flow_id"])


@pytest.fixture()
def rotated(tmp_path, mixed_pcap) -> list[Path]:  # noqa: F811
    """The mixed capture cut into three rotated files, the WireGuard session spanning the first two."""
    pkts = rdpcap(str(mixed_pcap))
    cuts = [0, 5, 9, len(pkts)]
    d = tmp_path / "spool"
    d.mkdir()
    paths = []
    for i in range(3):
        p = d / f"cap-{i:02d}.pcap"
        wrpcap(str(p), pkts[cuts[i] : cuts[i + 1]])
        paths.append(p)
    return paths


def test_join_equals_one_capture(mixed_pcap, rotated):  # noqa: F811
    whole = jsonl(vpnid("classify", "--format", "jsonl", str(mixed_pcap)).stdout)
    res = vpnid("classify", "--format", "jsonl", "--join", *map(str, rotated))
    assert res.returncode == 0, res.stderr
    joined = jsonl(res.stdout)
    assert without_pcap(joined) == without_pcap(whole)
    wg = next(r for r in joined if r["label"] == "wireguard")
    assert wg["pcap"] == str(rotated[0])  # a joined flow names the file it started in
    separate = jsonl(vpnid("classify", "--format", "jsonl", *map(str, rotated)).stdout)
    assert without_pcap(separate) != without_pcap(whole)  # without --join the session is cut in pieces


def test_classify_reads_a_capture_stream_on_stdin(mixed_pcap):  # noqa: F811
    res = subprocess.run([sys.executable, "-m", "vpnid.classifier.cli.main", "classify", "--format", "jsonl", "-"],
                         input=mixed_pcap.read_bytes(), capture_output=True, cwd=Path(__file__).parents[1], timeout=120)
    assert res.returncode == 0, res.stderr
    piped = jsonl(res.stdout.decode())
    assert {r["pcap"] for r in piped} == {"-"}
    assert without_pcap(piped) == without_pcap(jsonl(vpnid("classify", "--format", "jsonl", str(mixed_pcap)).stdout))


def _batch_rows(out: Path) -> list[dict]:
    rows = [r for p in sorted(out.glob("*.jsonl")) for r in jsonl(p.read_text())]
    return sorted(rows, key=lambda r: (r["pcap"], r["flow_id"]))


def test_batch_matches_classify_and_resumes(tmp_path, rotated, capsys):
    bad = rotated[0].parent / "cap-99.pcap"
    bad.write_bytes(b"not a capture at all")
    out = tmp_path / "out"
    assert main(["batch", str(rotated[0].parent), "--out", str(out), "--workers", "2"]) == 1
    assert "cap-99.pcap: not a capture file" in capsys.readouterr().err
    want = jsonl(vpnid("classify", "--format", "jsonl", *map(str, rotated)).stdout)
    assert _batch_rows(out) == sorted(want, key=lambda r: (r["pcap"], r["flow_id"]))
    parquet = [r for p in out.glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert sorted(parquet, key=lambda r: (r["pcap"], r["flow_id"])) == _batch_rows(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(p).name for p in manifest) == ["cap-00.pcap", "cap-01.pcap", "cap-02.pcap"]

    # Rerun: the finished captures are skipped, the bad one is tried (and reported) again.
    part = next(out.glob("cap-01.pcap.*.jsonl"))
    part.write_text("sentinel\n")
    assert main(["batch", str(rotated[0].parent), "--out", str(out)]) == 1
    assert "3 capture(s) already done" in capsys.readouterr().err
    assert part.read_text() == "sentinel\n"

    # A capture whose contents changed is redone; so is everything with --force.
    bad.unlink()
    os.utime(rotated[1], ns=(1, 1))
    assert main(["batch", str(rotated[0].parent), "--out", str(out)]) == 0
    assert "3 capture(s) already done" in capsys.readouterr().err  # same size and bytes: still done
    wrpcap(str(rotated[1]), rdpcap(str(rotated[1]))[:-1])
    assert main(["batch", str(rotated[0].parent), "--out", str(out)]) == 0
    assert "2 capture(s) already done" in capsys.readouterr().err
    assert part.read_text() != "sentinel\n"
    assert main(["batch", str(rotated[0].parent), "--out", str(out), "--force"]) == 0
    assert "already done" not in capsys.readouterr().err


def test_batch_join_on_dask_equals_local_run(tmp_path, mixed_pcap, rotated):  # noqa: F811
    distributed = pytest.importorskip("distributed")
    local = tmp_path / "local.parquet"
    assert main(["batch", str(rotated[0].parent), "--join", "--out", str(local), "--workers", "2"]) == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = tmp_path / "dask.parquet"
        assert main(["batch", str(rotated[0].parent), "--join", "--out", str(remote),
                     "--dask", cluster.scheduler_address]) == 0
    got, want = pq.read_table(remote).to_pylist(), pq.read_table(local).to_pylist()
    assert got == want and len(got) > 0
    whole = jsonl(vpnid("classify", "--format", "jsonl", str(mixed_pcap)).stdout)
    assert without_pcap(got) == without_pcap(whole)  # flows spanning files joined across tasks
