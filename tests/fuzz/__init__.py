"""Coverage-guided fuzzing of every stage that reads untrusted bytes (atheris), and the encodings that
turn one fuzzer byte string into each stage's input.

    python -m tests.fuzz --seconds 60            # every target, 60 s each
    python -m tests.fuzz --runs 100000 decode    # one target, a fixed number of executions
    python -m tests.fuzz.seeds                   # rebuild the committed seed corpus

`targets.py` holds the targets (plain functions, also run by the test suite on every seed and crash
reproducer); `worker.py` is the atheris process for one target; `corpus/<target>/` are the committed seeds
and `crashes/<target>/` the reproducers of bugs found, each also a regression test.
"""
