"""Process-wide settings for the processes that classify (the CLI, batch and Dask workers, live capture).

Library code sets no process policy: the entry points call `prepare_process` once before any work.
"""

from __future__ import annotations

import gc
import sys

GC_GEN0_THRESHOLD = 20_000


def prepare_process() -> None:
    """Everything a classifying process sets once: the collector's thresholds and numba's NumPy support.
    The latter only when numba is loaded already: the modules with compiled code import it, so a command
    whose modules did not (registry, leases) compiles nothing and is spared numba's import (~0.25 s).
    Should such a command load compiled code later after all, its first compiled call loads the same
    support itself, BLAS probe included (slower, same results)."""
    tune_gc()
    if "numba" in sys.modules:
        load_numba_arrays_without_blas_probe()


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path. Flows and dissectors are allocated by the
    thousand per chunk and live for many chunks; with the default gen-0 threshold (700) the collector
    walks every live flow again and again and took about a third of the run time. Objects alive after
    start-up (modules, the parser) are frozen out of collection altogether."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def load_numba_arrays_without_blas_probe() -> None:
    """Load numba's NumPy support (which its first compiled call would load) without its probe for
    SciPy's BLAS: `numba.np.arraymath` imports `scipy.linalg.cython_blas` only to learn whether BLAS is
    there, and that import costs a short `vpnid classify` ~0.1 s of its ~0.6 s. The compiled loops of
    `vpnid.features.capture` and `vpnid.classifier.labelling.compiled` use no linear algebra; without the probe, numba's compiled
    np.correlate/np.convolve in this process use numba's own inner product instead of BLAS, and nothing
    else changes (np.dot and np.linalg look for BLAS again when they are compiled). SciPy itself stays
    importable as usual: the block lasts only for this import. It must run before the process's first
    compiled call, which is why the entry points call `prepare_process` before any work."""
    blas = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or blas in sys.modules:
        return
    sys.modules[blas] = None  # type: ignore[assignment]  # importing it now fails at once
    try:
        import numba.np.arraymath  # noqa: F401
    except ImportError:  # another numba layout: its first compiled call loads what it needs, as before
        pass
    finally:
        del sys.modules[blas]
