"""``swarmpull loadtest``: a local surge and its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from swarmpull.cli import positive_int, size_arg


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "loadtest",
        help="simulate a surge: many nodes pull one image at once; report against the bound",
        description="Start an upstream, a supernode and N peer daemons on loopback; every "
        "node pulls the same image at the same moment; print the report.",
    )
    p.add_argument("--nodes", type=positive_int, default=50, metavar="N", help="nodes (default: %(default)s)")
    p.add_argument(
        "--image-size",
        type=size_arg,
        default="64MiB",
        metavar="SIZE",
        help="total size of the image (default: %(default)s)",
    )
    p.add_argument(
        "--layers", type=positive_int, default=4, metavar="K", help="layers (default: %(default)s)"
    )
    p.add_argument("--piece-size", type=size_arg, metavar="SIZE", help="piece size (default: by blob size)")
    p.add_argument(
        "--mode",
        choices=["p2p", "direct", "both"],
        default="p2p",
        help="through the swarm, straight to the registry, or both (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=1, metavar="S", help="seed of the image content")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=run, default_log_level="warning")

    b = subparsers.add_parser(
        "benchmarks",
        help="measure limits, zstd and the scheduler; print figures for docs/BENCHMARKS.md",
        description="Run the benchmarks (all of them by default) and print their figures.",
    )
    b.add_argument("names", nargs="*", metavar="NAME", help="limits, zstd (default: all)")
    b.add_argument("--seconds", type=float, default=6.0, help="length of each rate measurement (default: 6)")
    b.set_defaults(func=run_benchmarks, default_log_level="warning")


def run(args: argparse.Namespace) -> int:
    from loadtest.harness import SurgeConfig, run_surge
    from loadtest.report import dump_json, render
    from swarmpull.cli import CommandError
    from swarmpull.daemon import run_coroutine
    from swarmpull.units import format_size

    try:
        config = SurgeConfig(
            nodes=args.nodes,
            image_size=args.image_size,
            layers=args.layers,
            piece_size=args.piece_size,
            seed=args.seed,
            mode=args.mode,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None

    def progress(mode: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r  {mode}: {done}/{total} nodes done", end="", file=sys.stderr, flush=True)

    async def main() -> int:
        results = await run_surge(config, progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        settings = {
            "nodes": config.nodes,
            "image": f"{format_size(config.image_size)} in {config.layers} layers",
            "links": "unshaped loopback",
        }
        print(render(results, settings))
        if args.json:
            args.json.write_text(dump_json(results, settings))
        return 0 if all(r.failed == 0 and r.completed == r.nodes for r in results) else 1

    return run_coroutine(main)


def run_benchmarks(args: argparse.Namespace) -> int:
    from loadtest.benchmarks import BENCHMARKS
    from loadtest.benchmarks import run_benchmarks as run_all
    from swarmpull.cli import CommandError
    from swarmpull.daemon import run_coroutine

    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise CommandError(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    return run_coroutine(lambda: run_all(names, args))
