"""A small benchmark harness: interleaved A/B timing, an A/A control, one table, one JSON file.

A benchmark is a function returning the dict of :func:`measure` (or any dict with a ``ratio``),
registered with its target::

    @benchmark("P9", target="<=1.25", title="checkpoint save vs torch.save")
    def checkpoint_save() -> dict:
        model = ...
        return measure(lambda: save_weights(model, path), lambda: torch.save(...), repeats=15)

Every module ``benchmarks/p<N>_*.py`` is imported by :func:`discover`, so adding a benchmark is
adding such a file (or one more decorated function in it). One id per row of the table; a
benchmark with several rows uses ids ``P<N>-<name>`` (``P3-fgm``, ``P8-digits``), and selecting
``P3`` runs all of them. A benchmark that cannot run here (a demo not built yet) raises
:class:`NotAvailable` and shows as ``n/a``. ``python -m benchmarks [P1 P4 ...]`` runs them (see
``__main__.py``).
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import pkgutil
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.json"
_TARGET = re.compile(r"^\s*(<=|>=)\s*([0-9]*\.?[0-9]+)\s*$")
_ID = re.compile(r"^P(\d+)(?:-([a-z0-9_]+))?$")

# The benchmarks P1-P10 of the project. A full run shows a row for each of them, 'n/a' where no
# module registers it yet.
DEFINED = {
    "P1": ("<=1.03", "train step, no tricks vs raw accelerate"),
    "P2": ("<=1.03", "train step with EMA on vs off"),
    "P3": ("<=2.05", "train step with FGM / AWP / R-Drop vs the raw step"),
    "P4": (">=0.95", "image loader throughput vs best plain DataLoader"),
    "P5": (">=2.0", "text throughput, dynamic padding vs pad-to-max"),
    "P6": ("<=1.0", "TTA, n views batched vs n single-view passes"),
    "P7": (">=3", "hill climbing vs a per-candidate numpy loop"),
    "P8": ("<=1.0", "demo wall time / 300 s"),
    "P9": ("<=1.25", "checkpoint save (atomic safetensors) vs torch.save"),
    "P10": ("<=1.0", "text fine-tuning step vs transformers.Trainer"),
    "P11": ("<=1.0", "LoRA step on a tiny decoder vs peft + transformers.Trainer"),
    "P12": (">=1.5", "segmentation: tiled inference vs tile by tile; train step vs smp loop"),
    "P13": ("<=1.05", "one GBDT fold (LightGBM) vs the same lightgbm.train call"),
}


class NotAvailable(Exception):
    """Raised by a benchmark whose subject does not exist here; its row reads 'n/a'."""


# ---------------------------------------------------------------------------------------------
# Measuring


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleave(
    *calls: Callable[[], object],
    warmup: int,
    repeats: int,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> list[list[float]]:
    """Time ``calls`` in rounds, rotating their order: (F S), (S F), ... or (A B C), (B C A), ...

    Rotating cancels what the call that runs first pays for the next one (a cold cache, a
    pending writeback): over rounds every call runs in every position equally often. The first
    ``warmup`` rounds are run and dropped; a call that appears twice (the A/A control's B and
    B') is warmed once. After ``min_repeats`` timed rounds, timing stops early once
    ``budget_s`` seconds have gone by (None: no budget).

    Returns:
        The seconds of each timed call of each callable, round by round.
    """
    times: list[list[float]] = [[] for _ in calls]
    warm = [i for i, call in enumerate(calls) if call not in calls[:i]]  # each callable once
    started = time.perf_counter()
    for round_ in range(warmup + repeats):
        order = list(range(len(calls))) if round_ >= warmup else warm
        shift = round_ % len(order)
        seconds = {i: _time(calls[i]) for i in order[shift:] + order[:shift]}
        if round_ >= warmup:
            for i, t in seconds.items():
                times[i].append(t)
            out_of_time = budget_s is not None and time.perf_counter() - started > budget_s
            if out_of_time and len(times[0]) >= min_repeats:
                break
    return times


def ratio_of_medians(a: list[float], b: list[float]) -> float:
    """``median(a) / median(b)``; infinite when b's median is zero."""
    median_b = statistics.median(b)
    return statistics.median(a) / median_b if median_b > 0 else math.inf


def spread(b1: list[float], b2: list[float]) -> float:
    """The A/A control: how far apart two interleaved runs of the same work are, ``|r - 1|``."""
    return abs(ratio_of_medians(b1, b2) - 1)


def measure(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 20,
    control: bool | Callable[[], object] = True,
    throughput: bool = False,
    budget_s: float | None = None,
) -> dict:
    """Time A against B interleaved, with B timed twice per round for the A/A control.

    Each round runs A, B and B again (``B'``) in a rotating order, so the control (B against
    itself) is measured in the same rounds, under the same load, as the comparison it qualifies,
    and costs one call per round instead of a second phase of two. Both callables must do the
    same amount of work per call (one step, one epoch, one save).

    Args:
        a: the medalist side.
        b: the baseline.
        warmup: rounds run and dropped first (caches, allocator, lazy imports, thread pools).
        repeats: timed rounds.
        control: also time B' for the control; ``control_spread`` is None without it. A
            callable is B' itself: a second instance of the baseline built the same way (its
            own model, optimizer and batches), so that the spread also holds what differs
            between two instances of the same work (memory placement: a few percent on a
            training step), which B timed twice cannot show.
        throughput: report a throughput ratio ``B/A`` (higher is better) instead of ``A/B``.
        budget_s: seconds the rounds may take once 3 are timed.

    Returns:
        ``ratio`` (median A / median B, or B / A for throughput), ``control_spread``
        (``|median(B) / median(B') - 1|``), the medians in seconds and the rounds timed.
    """
    gc.collect()
    calls = (a, b, control if callable(control) else b) if control else (a, b)
    times = interleave(*calls, warmup=warmup, repeats=repeats, budget_s=budget_s)
    times_a, times_b = times[0], times[1]
    return {
        "ratio": ratio_of_medians(times_b, times_a)
        if throughput
        else ratio_of_medians(times_a, times_b),
        "control_spread": spread(times_b, times[2]) if control else None,
        "median_a_s": statistics.median(times_a),
        "median_b_s": statistics.median(times_b),
        "repeats": len(times_a),
    }


# ---------------------------------------------------------------------------------------------
# The registry


@dataclass
class Benchmark:
    id: str
    target: str
    fn: Callable[[], dict]
    title: str = ""
    slow: bool = False  # skipped by --fast; still run by default


REGISTRY: dict[str, Benchmark] = {}
BROKEN: dict[str, str] = {}  # family id -> why its module could not be imported


def parse_target(target: str) -> tuple[str, float]:
    """``"<=1.03"`` -> ``("<=", 1.03)``."""
    match = _TARGET.match(target)
    if match is None:
        raise ValueError(f"target {target!r} must look like '<=1.03' or '>=0.95'")
    return match.group(1), float(match.group(2))


def passes(ratio: float | None, target: str) -> bool:
    op, bound = parse_target(target)
    if ratio is None or not math.isfinite(ratio):
        return False
    return ratio <= bound if op == "<=" else ratio >= bound


def within_noise(ratio: float | None, target: str, control_spread: float | None) -> bool:
    """Whether a miss is smaller than the A/A control's spread (relative to the bound)."""
    if ratio is None or control_spread is None or not math.isfinite(ratio):
        return False
    _, bound = parse_target(target)
    return abs(ratio / bound - 1) <= control_spread


def family(id: str) -> str:
    """``"P3-fgm"`` -> ``"P3"``."""
    return id.split("-", 1)[0]


def benchmark(id: str, target: str, *, title: str = "", slow: bool = False):
    """Register ``fn() -> dict`` (with at least ``ratio``) as benchmark ``id``."""
    if _ID.match(id) is None:
        raise ValueError(f"benchmark id {id!r} must look like 'P7' or 'P7-accuracy'")
    parse_target(target)  # fail at import time on a malformed target

    def register(fn: Callable[[], dict]) -> Callable[[], dict]:
        if id in REGISTRY and REGISTRY[id].fn is not fn:
            raise ValueError(f"benchmark {id} is registered twice")
        REGISTRY[id] = Benchmark(id, target, fn, title or (fn.__doc__ or "").strip(), slow)
        return fn

    return register


def order_key(id: str) -> tuple:
    """P1 < P2 < ... < P10; within a family, the bare id first, then by name."""
    match = _ID.match(id)
    return (int(match.group(1)), match.group(2) or "") if match else (math.inf, id)


def discover(folder: Path | None = None, package: str | None = None) -> None:
    """Import every ``p<N>_*.py`` of ``folder`` (``benchmarks/``) so that its benchmarks register.

    A module that fails to import is recorded in :data:`BROKEN` and shows as an error row; the
    other benchmarks still run.
    """
    folder = folder or Path(__file__).resolve().parent
    package = package or __package__ or "benchmarks"
    for info in sorted(pkgutil.iter_modules([str(folder)]), key=lambda i: i.name):
        match = re.match(r"^p(\d+)_", info.name)
        if match is None:
            continue
        try:
            importlib.import_module(f"{package}.{info.name}")
        except Exception as exc:  # noqa: BLE001 - reported in the table
            BROKEN[f"P{match.group(1)}"] = f"{info.name}.py: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# Running and reporting


@dataclass
class Outcome:
    id: str
    target: str
    ratio: float | None
    control_spread: float | None
    seconds: float | None
    passed: bool | None  # None: not run (not available here)
    title: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.passed is None:
            return "n/a"
        if self.passed:
            return "pass"
        return "FAIL*" if within_noise(self.ratio, self.target, self.control_spread) else "FAIL"

    def to_json(self) -> dict:
        entry = {
            "ratio": _round(self.ratio),
            "target": self.target,
            "control_spread": _round(self.control_spread),
        }
        if self.seconds is not None:
            entry["seconds"] = round(float(self.seconds), 1)
        entry["pass"] = self.passed
        return entry


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def run_one(bench: Benchmark) -> Outcome:
    """Run one benchmark; an exception becomes an ERROR row, NotAvailable an 'n/a' row."""
    started = time.perf_counter()
    try:
        out = dict(bench.fn())
    except NotAvailable as exc:
        return Outcome(
            bench.id, bench.target, None, None, None, None, bench.title, None, {"note": str(exc)}
        )
    except Exception as exc:  # noqa: BLE001 - a broken benchmark is reported, the others run
        return Outcome(
            bench.id,
            bench.target,
            None,
            None,
            None,
            False,
            bench.title,
            f"{type(exc).__name__}: {exc}",
        )
    finally:
        gc.collect()
    ratio = out.pop("ratio", None)
    control_spread = out.pop("control_spread", None)
    seconds = out.pop("seconds", None)
    out["wall_s"] = time.perf_counter() - started
    return Outcome(
        bench.id,
        bench.target,
        ratio,
        control_spread,
        seconds,
        passes(ratio, bench.target),
        bench.title,
        extra=out,
    )


def _placeholder(family_id: str) -> Outcome:
    """The row of a defined benchmark that no module provides (or one that is broken)."""
    target, title = DEFINED.get(family_id, ("-", ""))
    if family_id in BROKEN:
        return Outcome(family_id, target, None, None, None, False, title, BROKEN[family_id])
    note = f"not available: no benchmarks/p{family_id[1:]}_*.py registers {family_id}"
    return Outcome(family_id, target, None, None, None, None, title, extra={"note": note})


def select(selected: Iterable[str] | None = None, *, fast: bool = False) -> list[Benchmark]:
    """The benchmarks to run, in id order: all (but the slow ones with ``fast``), or those named.

    A name is an id (``P3-fgm``) or a family (``P3``: every ``P3-*`` and ``P3`` itself).
    """
    if not selected:
        chosen = [b for b in REGISTRY.values() if not (fast and b.slow)]
        return sorted(chosen, key=lambda b: order_key(b.id))
    chosen: dict[str, Benchmark] = {}
    unknown = []
    for name in selected:
        name = name.strip()
        name = name[:1].upper() + name[1:].lower()
        hits = [b for b in REGISTRY.values() if b.id == name or family(b.id) == name]
        if not hits and name not in DEFINED and name not in BROKEN:
            unknown.append(name)
        chosen.update({b.id: b for b in hits})
    if unknown:
        known = sorted(set(REGISTRY) | set(DEFINED), key=order_key)
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {known}")
    return sorted(chosen.values(), key=lambda b: order_key(b.id))


def missing_families(selected: Iterable[str] | None) -> list[str]:
    """Defined (or broken) families wanted by this run that no registered benchmark covers."""
    covered = {family(id) for id in REGISTRY}
    known = sorted(set(DEFINED) | set(BROKEN), key=order_key)
    wanted = known if not selected else [s.strip().upper() for s in selected]
    return [f for f in wanted if f in known and f not in covered]


def render(outcomes: list[Outcome]):
    from rich.table import Table

    table = Table(
        title="medalist benchmarks: ratio of interleaved medians, medalist / baseline",
        caption="control spread: |B/B' - 1| of the baseline against itself (the noise); "
        "FAIL*: a miss smaller than that spread",
    )
    for name, justify in (
        ("id", "left"),
        ("what", "left"),
        ("ratio", "right"),
        ("target", "right"),
        ("control spread", "right"),
        ("seconds", "right"),
        ("result", "left"),
    ):
        table.add_column(name, justify=justify)
    colours = {"pass": "green", "FAIL": "red", "FAIL*": "yellow", "ERROR": "red", "n/a": "dim"}
    for o in outcomes:
        ratio = "-" if o.ratio is None else f"{o.ratio:.3f}"
        table.add_row(
            o.id,
            o.title,
            ratio,
            o.target,
            "-" if o.control_spread is None else f"{o.control_spread:.3f}",
            "-" if o.seconds is None else f"{o.seconds:.1f}",
            f"[{colours[o.status]}]{o.status}[/]",
        )
    return table


def write_results(outcomes: list[Outcome], path: Path = RESULTS, *, merge: bool = False) -> dict:
    """Write ``results.json``; with ``merge`` (a partial run) the other entries are kept."""
    data = {}
    if merge and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
    data.update({o.id: o.to_json() for o in outcomes})
    data = {k: data[k] for k in sorted(data, key=order_key)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def configure(threads: int | None = None) -> int:
    """CPU only, a fixed number of torch threads (default 1).

    One thread by default: on a shared machine a multi-threaded op waits at every barrier for
    its slowest thread, and a descheduled thread turns a 60 ms step into 800 ms (medians of the
    same step were seen 10x apart with 2 threads on 2 busy cores, not with 1). Both sides of a
    ratio run the same kernels either way; ``--threads`` measures with more.
    """
    import os

    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    threads = threads or 1
    torch.set_num_threads(threads)
    return threads


def _detail(outcome: Outcome) -> str:
    if outcome.error:
        return outcome.error
    parts = []
    for key, value in outcome.extra.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    if outcome.ratio is not None:
        parts.insert(0, f"ratio={outcome.ratio:.4g}")
    return ", ".join(parts)


def run_all(
    selected: Iterable[str] | None = None,
    *,
    fast: bool = False,
    results: Path | None = RESULTS,
    console=None,
) -> list[Outcome]:
    """Run the selected benchmarks (all when None), print one table, write ``results.json``."""
    from rich.console import Console

    selected = list(selected or [])
    console = console or Console(width=None if sys.stdout.isatty() else 130)
    benches = select(selected, fast=fast)
    outcomes = [_placeholder(f) for f in missing_families(selected)]
    for bench in benches:
        console.print(f"[bold]{bench.id}[/] {bench.title} ...", highlight=False)
        outcome = run_one(bench)
        console.print(f"  {outcome.status}: {_detail(outcome)}", highlight=False)
        outcomes.append(outcome)
    outcomes.sort(key=lambda o: order_key(o.id))
    console.print(render(outcomes))
    if results is not None:
        write_results(outcomes, results, merge=bool(selected))
        console.print(f"results: {results}", highlight=False)
    sys.stdout.flush()
    return outcomes
