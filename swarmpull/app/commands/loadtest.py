"""``swarmpull loadtest`` (a surge, real or simulated) and ``swarmpull benchmarks``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from swarmpull.app.args import positive_int, rate_arg, seconds_arg, size_arg


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "loadtest",
        help="a surge: many nodes pull one image at once; report against the bound",
        description="Start a registry, a supernode and N real node daemons on loopback; every "
        "node pulls the same image through its registry proxy at the same moment; report "
        "completion times against the Kumar-Ross bound. With --simulate, a discrete-event "
        "simulation drives the same scheduler for 10k to 100k nodes.",
    )
    p.add_argument(
        "--nodes", type=positive_int, default=100, metavar="N", help="nodes (default: %(default)s)"
    )
    p.add_argument(
        "--image-size",
        type=size_arg,
        default="4MiB",
        metavar="SIZE",
        help="image size (default: %(default)s)",
    )
    p.add_argument(
        "--layers", type=positive_int, default=4, metavar="K", help="layers (default: %(default)s)"
    )
    p.add_argument(
        "--piece-size",
        type=size_arg,
        metavar="SIZE",
        help="piece size (default: the supernode's rule, about 256 pieces a layer, but at least "
        "64KiB rather than 1MiB: 64KiB up to 16MiB layers, 4MiB for 1GiB; the same on real "
        "sockets and simulated)",
    )
    p.add_argument(
        "--node-bandwidth",
        type=rate_arg,
        default="100kB/s",
        metavar="RATE",
        help="each node's link, both ways (default: %(default)s)",
    )
    p.add_argument(
        "--registry-bandwidth",
        type=rate_arg,
        default="1MB/s",
        metavar="RATE",
        help="the registry's egress; the seed is held to it too (default: %(default)s)",
    )
    p.add_argument(
        "--mode",
        choices=["p2p", "direct", "both"],
        default="p2p",
        help="through the swarm, straight from the registry, or both (default: %(default)s)",
    )
    p.add_argument(
        "--transport",
        choices=["http", "bittorrent", "both"],
        default="http",
        help="p2p over the scheduled HTTP swarm, over libtorrent (the seed warm first), or both "
        "(both warm) (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=positive_int, metavar="W", help="worker processes (default: by nodes and cores)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="S",
        help="seed of the image and the simulation (default: %(default)s)",
    )
    p.add_argument(
        "--timeout", type=positive_int, metavar="SECONDS",
        help="how long a run may take; nodes not done by then count as failed "
        "(default: 900 s on sockets, 3600 simulated seconds)",
    )  # fmt: skip
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the report as JSON (default: no file)"
    )
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="also draw the report as a PNG (default: no file)"
    )
    p.add_argument(
        "--events-dir",
        type=Path,
        metavar="DIR",
        help="real sockets, p2p: keep the daemons' swarm events in DIR (supernode.jsonl, "
        "worker-N.jsonl; read them with `swarmpull events summarize`; default: none)",
    )
    p.set_defaults(tls=True)
    p.add_argument(
        "--tls",
        action="store_true",
        help="real sockets: mutual TLS between the supernode and the nodes, with a throwaway CA, as "
        "in production (the default; a fault run is plain HTTP either way)",
    )
    p.add_argument(
        "--insecure-cluster",
        dest="tls",
        action="store_false",
        help="real sockets: plain HTTP inside the cluster instead (what TLS costs: compare the two)",
    )
    _fault_options(p)
    sim = p.add_argument_group("simulation (with --simulate)")
    sim.add_argument("--simulate", action="store_true", help="a discrete-event simulation instead of sockets")
    sim.add_argument(
        "--slow-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of slow nodes, 0 to 1 (default: %(default)s)",
    )
    sim.add_argument(
        "--slow-factor",
        type=float,
        default=0.25,
        metavar="X",
        help="their links, times the others' (default: %(default)s)",
    )
    sim.add_argument(
        "--join-window",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="nodes join over this time; 0: all at once (default: %(default)s)",
    )
    sim.add_argument(
        "--fail-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of nodes that fail, 0 to 1 (default: %(default)s)",
    )
    sim.add_argument(
        "--fail-window",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="they fail within this time (default: %(default)s)",
    )
    sim.add_argument(
        "--trace", type=_interval, metavar="SECONDS",
        help="also print, every SECONDS of simulated time, the share of their links the nodes use, "
        "and the use by how crowded a node's parents are (default: no trace)",
    )  # fmt: skip
    sim.add_argument(
        "--rtt", type=float, default=0.0005, metavar="SECONDS",
        help="network round trip of every call and transfer (default: %(default)s)",
    )  # fmt: skip
    sim.add_argument(
        "--service", type=_service, metavar="KIND=SECONDS,...",
        help="supernode CPU seconds per call (open, report) and per extra task in a call "
        "(open_task, report_task), "
        "as `swarmpull benchmarks supernode` prints them (default: its figures in docs/BENCHMARKS.md)",
    )  # fmt: skip
    sim.add_argument(
        "--owners", type=positive_int, default=1, metavar="R",
        help="supernode replicas owning the layers (default: %(default)s)",
    )  # fmt: skip
    sim.add_argument(
        "--network", choices=["exact", "fast", "auto"], default="auto",
        help="exact: every flow repriced whenever a flow at its ends starts or ends; fast: a flow keeps "
        "the rate it started with; auto: exact up to 2000 nodes (default: %(default)s)",
    )  # fmt: skip
    p.set_defaults(func=run, default_log_level="warning")

    b = subparsers.add_parser(
        "benchmarks",
        help="measure limits, zstd, the supernode, TLS, the data plane, faults; figures for the docs",
        description="Run the benchmarks (all of them by default) and print their figures.",
    )
    b.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="limits, zstd, supernode, tls, dataplane, background, faults (default: all)",
    )
    b.add_argument(
        "--runs",
        type=positive_int,
        default=3,
        metavar="N",
        help="dataplane, background: runs of each (default: 3)",
    )
    b.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="length of each rate measurement (default: %(default)s)",
    )
    b.add_argument(
        "--peers",
        type=positive_int,
        default=1000,
        metavar="N",
        help="supernode: synthetic peers (default: 1000)",
    )
    b.add_argument(
        "--pieces",
        type=positive_int,
        default=256,
        metavar="P",
        help="supernode: pieces of the blob (default: 256)",
    )
    b.add_argument(
        "--tasks",
        type=positive_int,
        default=1,
        metavar="K",
        help="supernode: tasks (an image's layers), each peer opens them all in one call (default: 1)",
    )
    b.add_argument(
        "--duration",
        type=float,
        default=8.6,
        metavar="SECONDS",
        help="supernode: how long the surge lasts (default: 8.6, the bound of 1 GiB at 1 Gbit/s)",
    )
    b.add_argument(
        "--surge-nodes", type=positive_int, default=20, metavar="N",
        help="faults: real nodes in each surge (default: %(default)s)",
    )  # fmt: skip
    b.set_defaults(func=run_benchmarks, default_log_level="warning")


def _fault_options(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group(
        "faults (real sockets, p2p; the same surge runs first without them, for comparison)"
    )
    f.add_argument(
        "--kill-fraction", type=float, default=0.0, metavar="F",
        help="share of nodes killed (SIGKILL) mid-surge, half of them restarted on their data dir "
        "(default: %(default)s)",
    )  # fmt: skip
    f.add_argument(
        "--byzantine-fraction", type=float, default=0.0, metavar="F",
        help="share of nodes whose piece server lies (see --byzantine-mode) "
        "(default: %(default)s)",
    )  # fmt: skip
    f.add_argument(
        "--byzantine-mode", default="wrong",
        choices=["wrong", "truncate", "slow", "liar", "refuse", "absent"],
        help="wrong bytes, truncated pieces, pieces at a crawl, maps claiming every piece, "
        "every piece refused as busy, or answered not held "
        "(default: %(default)s)",
    )  # fmt: skip
    f.add_argument(
        "--flaky-upstream", type=float, default=0.0, metavar="P",
        help="the registry answers 503 or resets the connection with probability P "
        "(default: %(default)s)",
    )  # fmt: skip
    f.add_argument(
        "--kill-supernode", action="store_true",
        help="two supernode replicas on a real redis-server; the layers' owner is killed mid-surge",
    )  # fmt: skip
    f.add_argument(
        "--restart-redis", action="store_true",
        help="two supernode replicas on a real redis-server, which is killed and restarted mid-surge",
    )  # fmt: skip


def _faults(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The fault options as a FaultConfig; None when no fault is asked for."""
    from loadtest.faults import FaultConfig

    config = FaultConfig(
        kill_fraction=args.kill_fraction,
        byzantine_fraction=args.byzantine_fraction,
        byzantine_mode=args.byzantine_mode,
        flaky_upstream=args.flaky_upstream,
        kill_supernode=args.kill_supernode,
        restart_redis=args.restart_redis,
    )
    return config if config != FaultConfig(byzantine_mode=args.byzantine_mode) else None


def run(args: argparse.Namespace) -> int:
    from swarmpull.app.args import CommandError
    from swarmpull.core.geometry import choose_piece_size
    from swarmpull.edges.daemon import run_coroutine

    # One default for real and simulated runs alike (the simulator took 1 MiB pieces for
    # the default surge's 1 MiB layers, one piece a layer, and ran at 6x where real runs
    # at 2x): the supernode's rule, down to 64 KiB pieces for the load test's small images.
    args.piece_size = args.piece_size or choose_piece_size(args.image_size // args.layers, smallest=64 * 1024)
    settings = {
        "nodes": args.nodes,
        "image_bytes": args.image_size,
        "layers": args.layers,
        "piece_bytes": args.piece_size,
        "node_link_bytes_per_second": args.node_bandwidth,
        "registry_egress_bytes_per_second": args.registry_bandwidth,
    }
    try:
        faults = _faults(args)
        if faults is not None and (args.simulate or args.mode != "p2p"):
            raise ValueError("fault options apply to real p2p surges (no --simulate, --mode p2p)")
        if faults is not None and args.transport != "http":
            # The byzantine fronts and the audit speak only the HTTP swarm's piece protocol.
            raise ValueError("fault options apply to the HTTP swarm only (--transport http)")
        if args.trace and not args.simulate:
            raise ValueError("--trace applies to simulated surges (--simulate)")
        trace = None
        if args.simulate:
            results, trace = _simulate(args)
            settings["run"] = (
                f"discrete-event simulation, the production scheduler and piece policy, the supernode "
                f"charged, rtt {args.rtt * 1000:g} ms"
            )
        else:
            from loadtest.harness import SurgeConfig, run_surge

            config = SurgeConfig(
                nodes=args.nodes,
                image_size=args.image_size,
                layers=args.layers,
                piece_size=args.piece_size,
                node_bandwidth=args.node_bandwidth,
                registry_bandwidth=args.registry_bandwidth,
                mode=args.mode,
                transport=args.transport,
                workers=args.workers,
                seed=args.seed,
                faults=faults,
                events_dir=_events_dir(args.events_dir),
                tls=args.tls,
                **_timeout(args),
            )
            settings["run"] = f"real sockets, {config.worker_count()} worker processes"
            secure = config.tls and faults is None
            settings["cluster"] = "mutual TLS (a throwaway CA)" if secure else "plain HTTP"
            if faults is not None:
                settings["faults"] = faults.describe()
            results = run_coroutine(lambda: _surge(config, run_surge))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    write_report(results, settings, args.json, args.plot)
    if trace is not None:
        print(trace.render())
    if faults is not None:
        from loadtest.fault_report import render_faults

        print(render_faults(results))
    if args.events_dir is not None and any(args.events_dir.glob("*.jsonl")):
        print(f"events written to {args.events_dir.resolve()}", file=sys.stderr)
    if faults is not None:  # killed and byzantine nodes may fail; the goals may not
        return 0 if all(ok for _, ok in results[-1].faults.goals) else 1
    return 0 if all(r.failed == 0 for r in results) else 1


def _events_dir(path: Path | None) -> Path | None:
    """``path``, made if missing, and without events of an earlier run (they would mix)."""
    from swarmpull.app.args import CommandError

    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if any(path.glob("*.jsonl")):
            raise CommandError(f"--events-dir {path}: holds events of an earlier run: give an empty one")
    except OSError as exc:
        raise CommandError(f"--events-dir {path}: {exc.strerror or exc}") from None
    return path


def write_report(results, settings, json_path: Path | None, plot_path: Path | None) -> None:  # type: ignore[no-untyped-def]
    """The table on stdout; the JSON and the PNG where asked, each path said on stderr."""
    from loadtest.report import dump_json, render
    from swarmpull.app.args import CommandError

    print(render(results, settings))
    if json_path is not None:
        json_path.write_text(dump_json(results, settings))
        print(f"report written to {json_path.resolve()}", file=sys.stderr)
    if plot_path is not None:
        from loadtest.plot import plot

        try:
            plot(results, plot_path, settings)
        except ImportError:
            raise CommandError("--plot needs matplotlib: pip install 'swarmpull[loadtest]'") from None
        print(f"plot written to {plot_path.resolve()}", file=sys.stderr)


async def _surge(config, run_surge):  # type: ignore[no-untyped-def]
    last = [-math.inf]

    from swarmpull.core.units import format_size

    def progress(state) -> None:  # type: ignore[no-untyped-def]
        line = (
            f"  {state.mode}: {state.done}/{state.total} nodes done, {state.failed} failed, "
            f"{state.elapsed:5.1f}s, registry sent {format_size(state.egress)} "
        )
        if sys.stderr.isatty():
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif not 0 <= state.elapsed - last[0] < 15 or state.done + state.failed == state.total:
            last[0] = state.elapsed  # a line now and then in logs and CI (and when a mode starts)
            print(line, file=sys.stderr, flush=True)

    try:
        return await run_surge(config, progress)
    finally:
        if sys.stderr.isatty():
            print(file=sys.stderr)


def _timeout(args: argparse.Namespace) -> dict[str, float]:
    return {"timeout": float(args.timeout)} if args.timeout else {}


def _simulate(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from loadtest.simulate.config import SimConfig
    from loadtest.simulate.direct import simulate_direct
    from loadtest.simulate.swarm import SwarmSimulation

    network = args.network if args.network != "auto" else ("exact" if args.nodes <= 2000 else "fast")
    config = SimConfig(
        nodes=args.nodes,
        image_size=args.image_size,
        layers=args.layers,
        piece_size=args.piece_size,
        rtt=args.rtt,
        owners=args.owners,
        network=network,
        **({"service": args.service} if args.service else {}),
        node_up=args.node_bandwidth,
        node_down=args.node_bandwidth,
        registry_rate=args.registry_bandwidth,
        join_window=args.join_window,
        fail_fraction=args.fail_fraction,
        fail_window=args.fail_window,
        slow_fraction=args.slow_fraction,
        slow_factor=args.slow_factor,
        seed=args.seed,
        **_timeout(args),
    )
    results, trace = [], None
    if args.mode in ("p2p", "both"):
        sim = SwarmSimulation(config)
        if args.trace:
            from loadtest.simulate.trace import LinkTrace

            trace = LinkTrace(args.trace)
            trace.attach(sim)
        results.append(sim.run())
    if args.mode in ("direct", "both"):
        results.append(simulate_direct(config))
    return results, trace


def _interval(text: str) -> float:
    seconds = seconds_arg(text)
    if not 0.001 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"from 0.001 to 3600 seconds, not {text}")
    return seconds


def _service(text: str) -> dict[str, float]:
    """``open=0.4ms,report=0.3ms,open_task=0.15ms,report_task=0.1ms`` (seconds, or
    with an ``ms`` suffix); the kinds not named keep their defaults."""
    from loadtest.simulate.config import DEFAULT_SERVICE

    out = dict(DEFAULT_SERVICE)
    for item in text.split(","):
        kind, _, value = item.partition("=")
        kind = kind.strip()
        if kind not in DEFAULT_SERVICE:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r}: {', '.join(DEFAULT_SERVICE)}")
        try:
            seconds = float(value[:-2]) / 1000 if value.endswith("ms") else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: KIND=SECONDS, e.g. open=0.4ms") from None
        if not 0 <= seconds < 10:
            raise argparse.ArgumentTypeError(f"{item!r}: seconds from 0 to 10")
        out[kind] = seconds
    return out


def run_benchmarks(args: argparse.Namespace) -> int:
    from loadtest.bench import BENCHMARKS
    from loadtest.bench import run_benchmarks as run_all
    from swarmpull.app.args import CommandError
    from swarmpull.edges.daemon import run_coroutine

    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise CommandError(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    return run_coroutine(lambda: run_all(names, args))
