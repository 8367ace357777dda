"""Model files are untrusted input too: through `vpnid classify --model`, only a vpnid model of the
schema this vpnid computes loads; anything else is refused with one clear line, exit status 2, and no
code from the file ever runs. (tests/test_model.py covers altered archives and smuggled types.)"""

from __future__ import annotations

import hashlib
import os
import pickle

import skops.io as sio

from tests import pcapbuild as pb
from vpnid.classifier.cli.main import main
from vpnid.classifier.labelling.model import FILE_FORMAT, MARKER
from vpnid.features.vectors import SCHEMA_VERSION


class RunsCode:
    """Unpickling this runs a shell command: what a hostile "model" file would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def classify_with(model, tmp_path, capsys) -> tuple[int, str]:
    capture = tmp_path / "empty.pcap"
    capture.write_bytes(pb.pcap_header())
    rc = main(["classify", "--format", "jsonl", "--model", str(model), str(capture)])
    return rc, capsys.readouterr().err


def test_a_pickle_posing_as_a_model_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "vpnid.skops"
    evil.write_bytes(pickle.dumps(RunsCode(str(marker))))
    rc, err = classify_with(evil, tmp_path, capsys)
    assert (rc, err.startswith(f"vpnid: error: {evil}: not a vpnid model or damaged ("), err.count("\n")) == (
        2, True, 1), err
    assert not marker.exists()


def test_a_model_of_another_feature_schema_is_refused_with_what_to_do(tmp_path, capsys):
    inner = b"any inner archive"
    old = tmp_path / "old.skops"
    sio.dump({"marker": MARKER, "format": FILE_FORMAT, "schema_version": SCHEMA_VERSION + 1,
              "sha256": hashlib.sha256(inner).hexdigest(), "model": inner}, old)
    rc, err = classify_with(old, tmp_path, capsys)
    message = (f"{old}: model was trained on feature schema v{SCHEMA_VERSION + 1}, this vpnid computes "
               f"v{SCHEMA_VERSION}; retrain it with 'vpnid train'")
    assert (rc, err) == (2, f"vpnid: error: {message}\n")
