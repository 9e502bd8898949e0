"""The benchmark scripts run end to end (small settings) and print well-formed tables. Their
timings are not checked: speed is measured in benchmarks/, never asserted in tests."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script, *args):
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def rows(stdout):
    """Markdown table rows as lists of cells (header and rule lines left out)."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def number(cell):
    """A table cell that must hold a finite, non-negative number (a timing or a ratio of
    timings, which may round to 0.00 on a fast machine: its size is never asserted)."""
    value = float(cell)
    assert math.isfinite(value) and value >= 0, cell
    return value


@pytest.mark.slow
def test_bench_iwae_quick():
    table = rows(run("bench_iwae.py", "--quick", "-K", "50", "--repeats", "1"))
    assert [r[0] for r in table][:3] == [
        "inference.estimate is-guide", "hand-written PyTorch", "of which PSIS k-hat"]
    assert table[1][7] == "1.00"  # ratios are to the hand-written evaluator
    *ratios, fixed = table
    for r in ratios:
        number(r[7])
    assert fixed[0].startswith("fixed cost of a call")
    number(fixed[5])  # seconds per call


@pytest.mark.slow
def test_bench_svi_quick():
    table = rows(run("bench_svi.py", "--quick"))
    assert {(r[0], r[1]) for r in table} == {
        (b, c) for b in ("128", "1024")
        for c in ("hand-written PyTorch", "inference.fit", "inference.fit, compile=False",
                  "JitTrace_ELBO")}
    for r in table:
        number(r[5]), number(r[6])


@pytest.mark.slow
def test_bench_memory_small():
    table = rows(run("bench_memory.py", "--n", "20", "-K", "1", "-K", "200"))
    assert [(r[0], r[1]) for r in table] == [("1", "20"), ("200", "20")]
    for r in table:
        number(r[3])


@pytest.mark.slow
def test_bench_ais_quick():
    table = rows(run("bench_ais.py", "--quick"))
    assert [r[0] for r in table] == ["inference.estimate ais", "inference.estimate ais, jit=False",
                                     "hand-written PyTorch"]
    assert table[2][8] == "1.00"
    for r in table:
        number(r[8])


@pytest.mark.slow
def test_bench_bridge_quick():
    table = rows(run("bench_bridge.py", "--quick", "--repeats", "1"))
    assert [r[1] for r in table] == ["is-guide", "bridge", "bridge jit=True", "chib"]
    assert table[0][7] == "1.00"  # ratios are to is-guide's cost per evaluation
    for r in table:
        assert int(r[2]) > 0 and all(number(c) >= 0 for c in r[3:])


@pytest.mark.slow
def test_bench_frontier_quick():
    import inference
    from inference import estimators

    table = rows(run("bench_frontier.py", "--quick", "--repeats", "1"))
    ran = [r for r in table if not r[5].startswith("did not apply")]
    assert {r[0] for r in table} == {m for m in inference.methods()
                                     if not estimators.get(m).reference}
    assert next(r for r in ran if r[0] == "is-guide")[5] == "1.00"
    for r in ran:
        number(r[3])
        if r[4] != "-":
            number(r[4]), number(r[5])


@pytest.mark.slow
def test_bench_nested_ss_quick():
    table = rows(run("bench_nested_ss.py", "--quick"))
    assert [r[0] for r in table] == ["is-guide", "nested", "stepping-stone"]
    assert table[0][4] == "1.00"  # ratios are to is-guide's cost per evaluation
    for r in table:
        number(r[3])
        number(r[4])
