"""The atheris process for one target: `python -m tests.fuzz.worker TARGET [libFuzzer flags] [CORPUS...]`.

vpnid's own modules are imported under atheris' instrumentation so that coverage of their Python
branches guides the mutations. numba cannot compile instrumented bytecode, so each numba-compiled
function is swapped for the same function from a clean copy of its module (its branches are then
invisible to the fuzzer, the Python around it is not).
"""

from __future__ import annotations

import importlib.util
import sys

import atheris
from numba.core.dispatcher import Dispatcher

with atheris.instrument_imports(include=["vpnid.features", "vpnid.classifier"]):
    from tests.fuzz.targets import TARGETS



def compiled_modules() -> list[str]:
    """vpnid's imported modules that define numba-compiled functions."""
    return [name for name, module in list(sys.modules.items()) if name.startswith("vpnid.") and module is not None
            and any(isinstance(v, Dispatcher) for v in vars(module).values())]


def uninstrumented_compiled(module_name: str) -> None:
    path = sys.modules[module_name].__file__
    assert path is not None
    spec = importlib.util.spec_from_file_location(module_name, path)  # not the instrumenting loader
    assert spec is not None and spec.loader is not None
    clean = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clean)
    for name, value in vars(clean).items():
        if isinstance(value, Dispatcher):
            setattr(sys.modules[module_name], name, value)


def main() -> None:
    for module_name in compiled_modules():
        uninstrumented_compiled(module_name)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[sys.argv[1]])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
