"""The verdict of a mutation run (``tox -e mutation``): kill rate per module,
and a failure for any module under the bar or any unexplained survivor.

Run after ``mutmut run``, from the project root::

    python tests/mutation_report.py [--min-rate 90] [--survivors tests/mutation_survivors.txt]

It reads mutmut's result files (``mutants/<module>.py.meta``).  Per module:

- *reached*: mutants in a function some selected test calls; mutmut's
  "no tests" mutants (nothing calls the function) are counted apart and do
  not lower the rate;
- *killed*: a test failed, or the run timed out or crashed, under the mutant;
- *survived*: every test passed under the mutant ("suspicious" and
  unfinished mutants count as survivors too: nothing showed them caught).

It fails (exit 1) when a module kills under ``--min-rate`` percent of the
mutants it reaches, or when a survivor is not listed in the survivors file
with why it is equivalent; listed names that no longer survive are reported
as stale (a warning: delete them).  See a survivor with ``mutmut show NAME``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

# mutmut 3's exit codes (mutmut/stats.py): what each one means for the verdict.
_KILLED = {1, 3, 36, 24, -24, 152, 255, -9, -11}  # failed, pytest error, timeout, crash
_NO_TESTS = {5, 33}


def read_survivor_list(path: Path) -> dict[str, str]:
    """``name  why`` lines; ``#`` starts a comment, blank lines are skipped.
    A name with no reason is an error: the file exists to say why."""
    listed: dict[str, str] = {}
    for number, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, why = line.partition(" ")
        if not why.strip():
            raise SystemExit(f"{path}:{number}: {name} has no reason; say why the mutant is equivalent")
        if name in listed:
            raise SystemExit(f"{path}:{number}: {name} is listed twice")
        listed[name] = why.strip()
    return listed


def module_results(mutants_dir: Path, modules: Iterable[str]) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for module in modules:
        meta = mutants_dir / (module + ".meta")
        if not meta.exists():
            raise SystemExit(f"no mutation results for {module} ({meta} is missing): run 'mutmut run' first")
        out[module] = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    return out


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-rate", type=float, default=90.0, help="the lowest kill rate per module, in percent")
    parser.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="MODULE=RATE",
        help="a lower bar for one module, where every survivor is listed as equivalent (say why in tox.ini)",
    )
    parser.add_argument("--survivors", type=Path, default=here / "mutation_survivors.txt")
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's working directory")
    parser.add_argument("modules", nargs="*", help="the mutated files (default: setup.cfg's [mutmut] only_mutate)")
    args = parser.parse_args(argv)

    modules = args.modules or _configured_modules(Path("setup.cfg"))
    floors = {m: float(r) for m, _, r in (f.partition("=") for f in args.floor)}
    listed = read_survivor_list(args.survivors)
    results = module_results(args.mutants, modules)

    failed = False
    survivors: list[str] = []
    print(f"{'module':<32} {'killed':>7} {'reached':>8} {'rate':>7} {'no tests':>9}")
    for module, codes in results.items():
        killed = sum(1 for c in codes.values() if c in _KILLED)
        no_tests = sum(1 for c in codes.values() if c in _NO_TESTS)
        reached = len(codes) - no_tests
        alive = sorted(name for name, c in codes.items() if c not in _KILLED and c not in _NO_TESTS)
        survivors += alive
        rate = 100.0 * killed / reached if reached else 100.0
        bar = floors.get(module, args.min_rate)
        low = rate < bar
        failed |= low
        flag = f"  UNDER {bar:g}%" if low else (f"  (bar {bar:g}%)" if bar != args.min_rate else "")
        print(f"{module:<32} {killed:>7} {reached:>8} {rate:>6.1f}% {no_tests:>9}{flag}")

    unexplained = [name for name in survivors if name not in listed]
    if unexplained:
        failed = True
        print(f"\n{len(unexplained)} surviving mutant(s) not in {args.survivors}:")
        for name in unexplained:
            print(f"  {name}    (see it: mutmut show {name})")
        print("Kill each with a test of the behaviour it changes; if it is truly equivalent")
        print("(same output for every input), list it with one line saying why.")
    # (names are "package.module.function__mutmut_N"; methods are "xǁClassǁname")
    mutated = {name.rsplit(".", 1)[0] for codes in results.values() for name in codes}
    stale = [n for n in listed if n not in survivors and n.rsplit(".", 1)[0] in mutated]
    if stale:
        print(f"\nwarning: {len(stale)} listed survivor(s) are killed or gone now; delete them from {args.survivors}:")
        for name in stale:
            print(f"  {name}")
    print("\nmutation check " + ("FAILED" if failed else "passed"))
    return 1 if failed else 0


def _configured_modules(setup_cfg: Path) -> list[str]:
    from configparser import ConfigParser

    cfg = ConfigParser()
    cfg.read(setup_cfg)
    return [line.strip() for line in cfg.get("mutmut", "only_mutate").splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
