"""Run fuzz targets for a time or a number of executions: `python -m tests.fuzz --help`."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.targets import SEEDS_FROM, TARGETS

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus"
CRASHES = HERE / "crashes"
EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
LIMITS = ["-timeout=10", "-rss_limit_mb=2048", "-max_len=16384", "-print_final_stats=1"]
# Executions per atheris process. atheris' comparison hooks keep ~20-40 KB per execution when the
# instrumented code compares NumPy arrays (decode, pipeline): the same inputs run uninstrumented stay
# flat, but one process would reach the 2 GB limit after ~50 k executions. Rounds restart it, the grown
# corpus carrying over.
ROUND_RUNS = 20_000


@dataclass(frozen=True, slots=True)
class Result:
    target: str
    executions: int
    seconds: float
    artifact: str | None  # the input that failed, or None
    log: str

    @property
    def ok(self) -> bool:
        return self.artifact is None and self.executions > 0


def fuzz(target: str, seconds: int | None, runs: int | None, work: Path) -> Result:
    """One target for `seconds` (or `runs` executions) in rounds of atheris processes (see ROUND_RUNS):
    new corpus entries go to `work/<target>` and seed the next round, the committed seeds and crash
    reproducers are read as starting corpus, a failing input is saved in `work`."""
    began = time.monotonic()
    executions, log = 0, ""
    while True:
        left = None if runs is None else runs - executions
        budget = [f"-runs={ROUND_RUNS if left is None else min(ROUND_RUNS, left)}"]
        if seconds is not None:
            budget.append(f"-max_total_time={max(1, round(seconds - (time.monotonic() - began)))}")
        done, log, artifact = _round(target, budget, work)
        executions += done
        if artifact is not None:
            return Result(target, executions, time.monotonic() - began, artifact, log)
        out_of_time = seconds is not None and time.monotonic() - began >= seconds - 1
        if done == 0 or out_of_time or (runs is not None and executions >= runs):
            return Result(target, executions, time.monotonic() - began, None, log)


def _round(target: str, budget: list[str], work: Path) -> tuple[int, str, str | None]:
    """One atheris process: (executions, its log, the failing input or None)."""
    corpus = work / target
    corpus.mkdir(parents=True, exist_ok=True)
    starts = [d for d in (SEEDS / SEEDS_FROM.get(target, target), CRASHES / target) if d.is_dir()]
    cmd = [sys.executable, "-m", "tests.fuzz.worker", target, *LIMITS, *budget,
           f"-artifact_prefix={work}/{target}-", str(corpus), *map(str, starts)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace", check=False)
    log = proc.stdout + proc.stderr
    executed = EXECUTED.search(log)
    artifact = re.search(r"Test unit written to (\S+)", log)
    failed = proc.returncode != 0 or artifact is not None
    return (int(executed.group(1)) if executed else 0, log,
            (artifact.group(1) if artifact else "(no artifact)") if failed else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all of {', '.join(TARGETS)}")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=int, default=60, help="run each target this long (default: %(default)s)")
    g.add_argument("--runs", type=int, help="run each target for this many executions instead")
    p.add_argument("--jobs", type=int, default=1, help="targets run at once (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vpnid-fuzz",
                   help="grown corpus and failing inputs (default: %(default)s)")
    args = p.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    seconds = None if args.runs else args.seconds
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda t: fuzz(t, seconds, args.runs, args.work), args.targets or list(TARGETS)))
    for r in results:
        status = "ok" if r.ok else f"FAILED, input: {r.artifact}"
        print(f"{r.target:24} {r.executions:>10} executions {r.seconds:7.1f} s  {status}")
        if not r.ok:
            print(r.log[-4000:], file=sys.stderr)
    print(f"{'total':24} {sum(r.executions for r in results):>10} executions")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
