"""``python -m benchmarks [IDS ...] [--fast] [--threads N] [--list]``: run, print one table, write JSON.

IDS are benchmark ids (``P3-fgm``) or families (``P3``); none runs everything. A partial run
updates its own entries of ``benchmarks/results.json`` and keeps the others.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("ids", nargs="*", help="benchmarks to run, e.g. P1 P7 (default: all)")
    parser.add_argument("--fast", action="store_true", help="skip the slow ones (the demos, P8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    from benchmarks import harness

    threads = harness.configure(args.threads)  # before any benchmark builds a model
    harness.discover()
    if args.list:
        for bench in harness.select(None):
            print(f"{bench.id}\t{bench.target}\t{'slow ' if bench.slow else ''}{bench.title}")
        for family_id in harness.missing_families(None):
            print(f"{family_id}\t-\tnot available")
        return 0
    started = time.perf_counter()
    outcomes = harness.run_all(args.ids, fast=args.fast)
    print(
        f"{len(outcomes)} row(s), torch threads {threads}, "
        f"total wall time {time.perf_counter() - started:.0f} s"
    )
    return 0  # benchmarks are not tests: a miss is reported, not an error


if __name__ == "__main__":
    raise SystemExit(main())
