"""Model loading, owned here: which model a run uses, and the audited path or the compiled cache behind it.

The shipped model is package data (`vpnid/models/vpnid.skops`), found through `importlib.resources`, so
an installed wheel finds it wherever it lives.

The compiled cache and what it protects against: an entry is used only for the model file whose sha256
it names, only if its arrays still match the sha256 stored with them and every index in them stays in
bounds (else it is rebuilt from the audited model), and only if the entry and its folder belong to this
user and no one else can write them. That stops a damaged or naively edited entry and anyone else on
the machine. It cannot stop someone who can write files as you: they could write a consistent entry,
but they could as well replace the model file or vpnid itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from vpnid.classifier.labelling.judgement import ModelError

if TYPE_CHECKING:
    from vpnid.classifier.labelling.compiled import CompiledModel
    from vpnid.classifier.labelling.model import FlowModel

DEFAULT_MODEL = Path(str(files("vpnid") / "models" / "vpnid.skops"))
CACHE_ENV = "VPNID_CACHE_DIR"  # where compiled models are kept (default: $XDG_CACHE_HOME/vpnid or ~/.cache/vpnid)
def model_sha256(path: Path) -> str | None:
    """The sha256 of a model file, or None when there is none (a checkout without its model)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def cache_dir() -> Path | None:
    """Where compiled models are kept; None when there is no place for them (no home directory)."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base)
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vpnid"
    except RuntimeError:
        return None


def load(path: str | Path) -> CompiledModel | FlowModel:
    """The model in a vpnid model file, ready to judge flows (see `load_identified`)."""
    return load_identified(path)[0]


def load_identified(path: str | Path) -> tuple[CompiledModel | FlowModel, str]:
    """The model in a vpnid model file and the sha256 of the bytes it came from (what a trial records):
    from the cache when this exact file (by sha256) was audited and compiled before, else read through
    `vpnid.classifier.labelling.model.load` (which refuses anything that is not a vpnid model) and
    compiled into the cache for the next run."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    except OSError as e:
        raise ModelError(f"{path}: not a vpnid model or damaged ({type(e).__name__}: {e})") from None
    # the compiled predictor loads numba, which `vpnid --version` (model_sha256) does without
    from vpnid.classifier.labelling.compiled import CompiledModel, compile_model

    digest = hashlib.sha256(data).hexdigest()
    where = cache_dir()
    cached = where / f"model-{digest}.npz" if where and (_private(where) or not where.exists()) else None
    compiled = CompiledModel.read(cached, digest) if cached and _private(cached) else None
    if compiled is not None:
        return compiled, digest
    from vpnid.classifier.labelling.model import load as load_audited

    model = load_audited(path, data)
    compiled = compile_model(model)
    if compiled is None:
        return model, digest
    if cached is not None:
        _store(compiled, cached, digest)
    return compiled, digest


def _private(path: Path) -> bool:
    """Is `path` (not a link) owned by this user and writable by no one else? A cache folder or entry
    that is not is never used: whoever else can write it could plant arrays this run would trust."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode)


def _store(compiled: CompiledModel, cached: Path, digest: str) -> None:
    """Write the cache entry whole or not at all (runs may race); without a writable cache (read-only
    home) the next run audits the model file again."""
    with contextlib.suppress(OSError):
        cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".model-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                compiled.save(f, digest)
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
