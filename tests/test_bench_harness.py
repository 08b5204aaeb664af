"""The benchmark harness: interleaving, ratios, the control, targets, the table and results.json.

Nothing here times real work: a fake clock advances by a fixed amount per call.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))
harness = importlib.import_module("benchmarks.harness")


@pytest.fixture
def registry(monkeypatch):
    """Empty registries for the test, none of the listed benchmarks expected; restored after."""
    monkeypatch.setattr(harness, "REGISTRY", {})
    monkeypatch.setattr(harness, "BROKEN", {})
    monkeypatch.setattr(harness, "DEFINED", {})
    return harness.REGISTRY


@pytest.fixture
def clock(monkeypatch):
    """A fake perf_counter, and calls advancing it: ``fixed(seconds)``, ``sequence(durations)``."""
    now = [0.0]
    monkeypatch.setattr(harness.time, "perf_counter", lambda: now[0])

    def sequence(durations, log: list | None = None, name: str = ""):
        durations = iter(durations)

        def call() -> None:
            now[0] += next(durations)
            if log is not None:
                log.append(name)

        return call

    def fixed(seconds: float, log: list | None = None, name: str = ""):
        return sequence(iter(lambda: seconds, None), log, name)

    return fixed, sequence


def test_measure_rotates_a_b_and_the_control_in_each_round(clock):
    fixed, _ = clock
    calls = []
    result = harness.measure(fixed(2.0, calls, "A"), fixed(1.0, calls, "B"), warmup=2, repeats=5)
    warm, timed = calls[:4], calls[4:]
    assert warm == ["A", "B", "B", "A"]  # warm-up rounds: each callable once, order alternating
    rounds = [timed[i : i + 3] for i in range(0, len(timed), 3)]
    assert len(rounds) == 5 and all(sorted(r) == ["A", "B", "B"] for r in rounds)
    assert [r.index("A") for r in rounds] == [1, 0, 2, 1, 0]  # A in every position in turn
    assert result["ratio"] == pytest.approx(2.0)
    assert result["control_spread"] == pytest.approx(0.0)
    assert (result["median_a_s"], result["median_b_s"]) == (pytest.approx(2.0), pytest.approx(1.0))
    assert result["repeats"] == 5


def test_without_control_the_rounds_are_pairs(clock):
    fixed, _ = clock
    calls = []
    result = harness.measure(
        fixed(2.0, calls, "A"), fixed(1.0, calls, "B"), warmup=1, repeats=3, control=False
    )
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert result["control_spread"] is None and result["repeats"] == 3


def test_measure_takes_medians_after_warmup(clock):
    _, sequence = clock
    a = sequence([100.0, 3.0, 5.0, 4.0])  # the warm-up call (100 s) is dropped
    b = sequence([50.0, 1.0, 2.0, 9.0])
    result = harness.measure(a, b, warmup=1, repeats=3, control=False)
    assert result["median_a_s"] == pytest.approx(4.0)  # median of 3, 5, 4
    assert result["median_b_s"] == pytest.approx(2.0)  # median of 1, 2, 9
    assert result["ratio"] == pytest.approx(2.0)
    assert result["control_spread"] is None


def test_throughput_ratio_is_b_over_a(clock):
    fixed, _ = clock
    result = harness.measure(fixed(2.0), fixed(1.0), warmup=0, repeats=3, throughput=True)
    assert result["ratio"] == pytest.approx(0.5)


def test_control_spread_is_the_relative_gap_of_the_baseline_with_itself():
    assert harness.spread([1.0, 1.0, 5.0], [1.1, 1.1, 0.1]) == pytest.approx(abs(1.0 / 1.1 - 1))
    assert harness.spread([2.0, 2.0], [2.0, 2.0]) == 0.0


def test_measure_takes_the_control_spread_from_b_against_itself(clock):
    """The second B of every round is 20% slower than the first, wherever A runs."""
    fixed, sequence = clock
    warm = [1.0]
    rounds = [1.0, 1.2] * 3  # B's calls in call order: B then B' in every round
    result = harness.measure(fixed(1.0), sequence(warm + rounds), warmup=1, repeats=3)
    assert result["ratio"] == pytest.approx(1.0)
    assert result["control_spread"] == pytest.approx(0.2 / 1.2)


def test_a_second_instance_of_the_baseline_is_the_control(clock):
    """control=B2: every round runs A, B and B2; the spread is B against B2 (here 10% slower)."""
    fixed, _ = clock
    calls = []
    result = harness.measure(
        fixed(1.0, calls, "A"),
        fixed(1.0, calls, "B"),
        warmup=1,
        repeats=3,
        control=fixed(1.1, calls, "B2"),
    )
    rounds = [calls[i : i + 3] for i in range(3, len(calls), 3)]
    assert len(rounds) == 3 and all(sorted(r) == ["A", "B", "B2"] for r in rounds)
    assert result["ratio"] == pytest.approx(1.0)
    assert result["control_spread"] == pytest.approx(0.1 / 1.1)


def test_a_budget_stops_timing_after_the_minimum_repeats(clock):
    fixed, _ = clock
    calls = []
    result = harness.measure(
        fixed(10.0, calls, "A"), fixed(10.0, calls, "B"), warmup=1, repeats=50, budget_s=5
    )
    assert result["repeats"] == 3  # min_repeats rounds, although every round exceeds the budget
    assert len(calls) == 2 + 3 * 3  # one warm-up round of A and B, three rounds of A, B, B'


@pytest.mark.parametrize(
    ("ratio", "target", "ok"),
    [
        (1.02, "<=1.03", True),
        (1.03, "<=1.03", True),
        (1.04, "<=1.03", False),
        (0.96, ">=0.95", True),
        (0.94, ">=0.95", False),
        (12.0, ">= 10", True),
        (None, "<=1.0", False),
        (float("nan"), "<=1.0", False),
        (float("inf"), ">=10", False),
    ],
)
def test_pass_fail_follows_the_target(ratio, target, ok):
    assert harness.passes(ratio, target) is ok


@pytest.mark.parametrize(
    ("target", "parsed"), [("<=1.03", ("<=", 1.03)), (">= 10", (">=", 10.0)), ("<=.5", ("<=", 0.5))]
)
def test_targets_parse(target, parsed):
    assert harness.parse_target(target) == parsed


@pytest.mark.parametrize("target", ["1.03", "<1.03", "=<1", "<=x", "", ">=1.0.0"])
def test_a_malformed_target_is_refused(target):
    with pytest.raises(ValueError, match="target"):
        harness.parse_target(target)


def test_a_miss_within_the_control_spread_is_marked():
    near = harness.Outcome("P1", "<=1.03", 1.04, 0.02, None, False)
    far = harness.Outcome("P1", "<=1.03", 1.10, 0.02, None, False)
    assert (near.status, far.status) == ("FAIL*", "FAIL")
    assert harness.Outcome("P1", "<=1.03", 1.0, 0.0, None, True).status == "pass"
    assert harness.Outcome("P8-text", "<=1.0", None, None, None, None).status == "n/a"


def test_ids_are_checked_and_ordered_numerically(registry):
    with pytest.raises(ValueError, match="id"):
        harness.benchmark("p1", target="<=1.0")
    with pytest.raises(ValueError, match="id"):
        harness.benchmark("P3 fgm", target="<=1.0")
    ids = ["P10", "P3-rdrop", "P2", "P3", "P3-awp", "P1"]
    assert sorted(ids, key=harness.order_key) == ["P1", "P2", "P3", "P3-awp", "P3-rdrop", "P10"]


def test_registering_selecting_and_the_results_file(registry, tmp_path):
    @harness.benchmark("P2", target="<=1.03", title="ema on vs off")
    def p2():
        return {"ratio": 1.01, "control_spread": 0.004, "median_a_s": 0.1}

    @harness.benchmark("P10", target="<=1.0", title="peer")
    def p10():
        return {"ratio": 1.2, "control_spread": 0.02, "seconds": 12.345}

    @harness.benchmark("P7-accuracy", target=">=10", title="speed-up", slow=True)
    def p7a():
        raise RuntimeError("broken")

    @harness.benchmark("P7-log_loss", target=">=10")
    def p7b():
        return {"ratio": 12.34567, "control_spread": 0.1, "seconds": 0.26}

    @harness.benchmark("P8-text", target="<=1.0")
    def p8():
        raise harness.NotAvailable("no text demo")

    with pytest.raises(ValueError, match="twice"):
        harness.benchmark("P2", target="<=1.0")(lambda: {})

    assert [b.id for b in harness.select(None)] == [
        "P2",
        "P7-accuracy",
        "P7-log_loss",
        "P8-text",
        "P10",
    ]
    assert [b.id for b in harness.select(None, fast=True)] == [
        "P2",
        "P7-log_loss",
        "P8-text",
        "P10",
    ]
    assert [b.id for b in harness.select(["p10", "P7"])] == ["P7-accuracy", "P7-log_loss", "P10"]
    assert [b.id for b in harness.select(["P7-LOG_LOSS"])] == ["P7-log_loss"]
    with pytest.raises(SystemExit, match="unknown"):
        harness.select(["P99"])

    path = tmp_path / "results.json"
    outcomes = harness.run_all(None, results=path)
    assert [o.status for o in outcomes] == ["pass", "ERROR", "pass", "n/a", "FAIL"]
    assert outcomes[1].error == "RuntimeError: broken"
    assert outcomes[0].extra["median_a_s"] == 0.1
    assert json.loads(path.read_text()) == {
        "P2": {"ratio": 1.01, "target": "<=1.03", "control_spread": 0.004, "pass": True},
        "P7-accuracy": {"ratio": None, "target": ">=10", "control_spread": None, "pass": False},
        "P7-log_loss": {
            "ratio": 12.3457,
            "target": ">=10",
            "control_spread": 0.1,
            "seconds": 0.3,
            "pass": True,
        },
        "P8-text": {"ratio": None, "target": "<=1.0", "control_spread": None, "pass": None},
        "P10": {
            "ratio": 1.2,
            "target": "<=1.0",
            "control_spread": 0.02,
            "seconds": 12.3,
            "pass": False,
        },
    }


def test_a_partial_run_keeps_the_other_entries(registry, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"P8-digits": {"ratio": 0.5, "target": "<=1.0", "pass": True}}))

    @harness.benchmark("P1", target="<=1.03")
    def p1():
        return {"ratio": 1.0, "control_spread": 0.0}

    harness.run_all(["P1"], results=path)
    assert list(json.loads(path.read_text())) == ["P1", "P8-digits"]
    harness.run_all(None, results=path)  # a full run starts the file afresh
    assert set(json.loads(path.read_text())) == {"P1"}


def test_every_benchmark_of_the_spec_has_a_row(registry, monkeypatch, tmp_path):
    """A benchmark no module provides yet shows as 'n/a'; a module that fails to import, ERROR."""
    monkeypatch.setattr(harness, "DEFINED", {"P1": ("<=1.03", "step"), "P5": (">=2.0", "text")})
    monkeypatch.setattr(harness, "BROKEN", {"P6": "p6_tta.py: ImportError: no"})

    @harness.benchmark("P1", target="<=1.03")
    def p1():
        return {"ratio": 1.0, "control_spread": 0.0}

    outcomes = harness.run_all(None, results=tmp_path / "r.json")
    assert [(o.id, o.status) for o in outcomes] == [("P1", "pass"), ("P5", "n/a"), ("P6", "ERROR")]
    assert "not available" in outcomes[1].extra["note"]
    only_p5 = harness.run_all(["P5"], results=None)
    assert [(o.id, o.status) for o in only_p5] == [("P5", "n/a")]


def test_the_table_has_one_row_per_benchmark(registry):
    from rich.console import Console

    outcomes = [
        harness.Outcome("P1", "<=1.03", 1.0123, 0.0046, None, True, "step"),
        harness.Outcome("P8-digits", "<=1.0", 0.5, None, 150.0, True, "demo"),
        harness.Outcome("P8-text", "<=1.0", None, None, None, None, "text demo"),
    ]
    console = Console(width=200, record=True)
    console.print(harness.render(outcomes))
    text = console.export_text()
    assert "1.012" in text and "0.005" in text and "150.0" in text and "pass" in text
    assert "n/a" in text
    headers = [c.header for c in harness.render(outcomes).columns]
    assert headers == ["id", "what", "ratio", "target", "control spread", "seconds", "result"]


def test_discovery_picks_up_new_modules_and_reports_broken_ones(registry, tmp_path, monkeypatch):
    package = tmp_path / "benchpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "p5_text_padding.py").write_text(
        "from benchmarks.harness import benchmark\n"
        "@benchmark('P5', target='>=2.0')\n"
        "def padding():\n"
        "    return {'ratio': 2.5, 'control_spread': 0.01}\n"
    )
    (package / "p10_text_step.py").write_text("raise ImportError('half written')\n")
    (package / "helpers.py").write_text("raise RuntimeError('not a benchmark module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    harness.discover(package, "benchpkg")
    assert list(harness.REGISTRY) == ["P5"]
    assert harness.BROKEN == {"P10": "p10_text_step.py: ImportError: half written"}


def test_the_benchmarks_of_this_repository_register():
    """Importing benchmarks/p*_*.py registers them (without running them)."""
    harness.discover()
    assert not harness.BROKEN
    expected = {"P1", "P2", "P3-fgm", "P3-awp", "P3-rdrop", "P3-off", "P4", "P6"}
    expected |= {"P7-log_loss", "P7-accuracy", "P8-digits", "P8-text", "P9", "P13"}
    assert expected <= set(harness.REGISTRY)
    assert harness.REGISTRY["P8-digits"].slow and harness.REGISTRY["P8-text"].slow
    for bench in harness.REGISTRY.values():
        harness.parse_target(bench.target)
