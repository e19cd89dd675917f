"""`make bench`: python -m benchmarks.httpbench [--quick] [--only l1,bare] [--repetitions N].

Exits 0 whatever the figures are (targets are reported, never enforced); 2 when the set-up is
broken (a tool missing, a server that will not start, a load generator that fails), after
writing whatever was measured until then.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.httpbench import machine
from benchmarks.httpbench.collector import capture_payloads, ramp
from benchmarks.httpbench.report import render, run_warnings
from benchmarks.httpbench.results import LatencyRun, RunResult
from benchmarks.httpbench.runner import Runner, log, median_saturation
from benchmarks.httpbench.shape import FULL, QUICK, Shape
from benchmarks.httpbench.stack import REPO_ROOT, Stack, Tools, find_tools, scrub_environment
from benchmarks.httpbench.variants import Variant, all_variants, select

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.httpbench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="seconds per variant: a smoke test, not figures")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated variant names or tags (bare, l1, redis, computed, batch, pg, w2, "
        "telemetry-on, ...; `collector` for the collector ramp); default: everything",
    )
    parser.add_argument("--repetitions", type=int, help="override the shape's repetitions")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--workdir", type=Path, help="parent of the run's scratch directory (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (server logs)")
    parser.add_argument("--report-from", type=Path, help="render the report of a results JSON, run nothing")
    parser.add_argument("--list", action="store_true", help="list the variants, their tags and forcing")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    shape: Shape
    variants: list[Variant]
    collector: bool  # the collector ramp
    tokens: list[str]  # --only, for the results file's name


def plan(args: argparse.Namespace) -> Plan:
    shape = QUICK if args.quick else FULL
    if args.repetitions:
        shape = shape.model_copy(update={"repetitions": args.repetitions})
    tokens = [token.strip() for token in args.only.split(",") if token.strip()]
    variants = [] if tokens == ["collector"] else select(all_variants(), tokens)
    return Plan(shape, variants, not tokens or "collector" in tokens, tokens)


def results_path(results_dir: Path, shape: Shape, tokens: list[str], day: str) -> Path:
    """`<date>.md` for a full run; quick and partial runs are marked so they are not mistaken for one."""
    name = day + ("-quick" if shape.name == "quick" else "")
    if tokens:
        name += "-only-" + "-".join(sorted(tokens))
    return results_dir / f"{name}.md"


def measure(
    result: RunResult, stack: Stack, runner: Runner, variants: list[Variant], collector: bool
) -> None:
    """Both phases, then the collector ramp; fills `result` as it goes (kept if a step fails)."""
    log(f"phase 1: saturation, {len(variants)} variants x {runner.shape.repetitions} repetitions")
    for run in runner.saturation_phase(variants):
        result.saturation.append(run)
    log("phase 2: latency at fixed offered rates")
    for item in runner.latency_phase(variants, median_saturation(result.saturation)):
        if isinstance(item, LatencyRun):
            result.latency.append(item)
        else:
            result.scrapes.append(item)
    if collector:
        log("collector: capturing real OTLP payloads, then the rate ramp")
        result.collector = ramp(runner, capture_payloads(runner))


# A server or tool that fails mid-run: the set-up is broken, not the figures.
BROKEN = (RuntimeError, OSError, subprocess.SubprocessError, httpx.HTTPError)


def execute(plan: Plan, *, results_dir: Path, workdir_parent: Path | None = None, keep: bool = False) -> int:
    """Run the plan, write its results (even a partial run's); 0, or 2 if the set-up broke."""
    workdir = Path(tempfile.mkdtemp(prefix="stockpred-bench-", dir=workdir_parent))
    started = dt.datetime.now().astimezone()
    result: RunResult | None = None
    status = 0
    try:
        need_collector = plan.collector or any(v.telemetry == "on" for v in plan.variants)
        tools: Tools = find_tools(need_collector=need_collector)
        setup = machine.describe(wrk=tools.wrk, vegeta=tools.vegeta, otelcol=tools.otelcol, workdir=workdir)
        result = RunResult(
            started=started.isoformat(timespec="seconds"),
            setup=setup,
            shape=plan.shape,
            variants=plan.variants,
        )
        names = [v.name for v in plan.variants]
        log(f"scratch directory {workdir}; shape {plan.shape.name}; variants {names}")
        with Stack(workdir, plan.variants, collector=plan.collector) as stack:
            scratch = workdir / "load"
            scratch.mkdir()
            try:
                measure(
                    result, stack, Runner(stack, tools, plan.shape, scratch), plan.variants, plan.collector
                )
            finally:
                result.notes += stack.notes
    except BROKEN as error:
        log(f"set-up broken: {error}")
        if result is not None:
            result.notes.append(f"run aborted, set-up broken: {error}")
        status = 2
    finally:
        if keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if result is not None:
        write(result, results_path(results_dir, plan.shape, plan.tokens, started.date().isoformat()))
    return status


def write(result: RunResult, path: Path) -> None:
    result.finished = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    result.setup["load_average_at_end"] = machine.load_average()
    result.notes += run_warnings(result)
    text = render(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(result.model_dump_json(indent=1))
    print(text)
    log(f"results written to {path} (and {path.with_suffix('.json').name})")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for variant in all_variants():
            extra = " (only when named)" if variant.extra else ""
            print(f"{variant.name}{extra}\n  tags: {' '.join(sorted(variant.tags))}\n  {variant.forcing()}")
        return 0
    if args.report_from:
        print(render(RunResult.model_validate_json(args.report_from.read_text())))
        return 0
    scrub_environment()
    try:
        chosen = plan(args)
    except ValueError as error:  # an unknown --only token
        print(error, file=sys.stderr)
        return 2
    return execute(chosen, results_dir=args.results_dir, workdir_parent=args.workdir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
