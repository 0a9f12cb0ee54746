"""The command line's contract, checked in process: versions, where flags go, help and
defaults, and exit status 2 for every command line that cannot work."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from peer.config import PeerConfig
from peer.get import Fetched
from supernode.config import SupernodeConfig
from swarmpull import __version__
from swarmpull.app.args import limit_arg
from swarmpull.app.cli import _commands, build_parser, main
from swarmpull.app.commands.peer import get_summary
from swarmpull.edges.http import HostPort

SN = "http://127.0.0.1:1"
PLAIN_PEER = ["peer", "--supernode", SN, "--insecure-cluster"]
NOT_OPTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch):
    """A command line found fine by mistake must fail the test, not start a daemon."""

    def refuse(*args, **kwargs):
        pytest.fail("the command started running")

    monkeypatch.setattr("swarmpull.edges.daemon.run_daemon", refuse)
    monkeypatch.setattr("swarmpull.edges.daemon.run_coroutine", refuse)


def run(argv: list[str]) -> int:
    """``main(argv)``'s exit status, whether it returns or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"swarmpull {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "peer", "--supernode", SN],
        ["peer", "--supernode", SN, "--log-level", "debug"],
        ["ca", "issue", "--ca", "x", "--name", "n", "--out", "y", "--log-level", "debug"],
        ["get", "http://h/f", "-o", "f", "--log-level", "debug"],
    ],
)
def test_log_level_goes_before_or_after_the_command(argv):
    assert build_parser().parse_args(argv).log_level == "debug"


def test_log_level_unset_leaves_the_commands_default():
    args = build_parser().parse_args(["peer", "--supernode", SN])
    assert args.log_level is None and args.default_log_level == "info"


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    missing = []
    for command in [parser, *_commands(parser)]:
        for action in command._actions:
            if isinstance(action, NOT_OPTIONS):
                continue
            text = action.help or ""
            takes_value = action.nargs != 0
            optional = bool(action.option_strings) and not action.required
            if not text or (takes_value and optional and "default" not in text):
                missing.append(f"{command.prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help or default: {missing}"


def test_zero_means_no_limit_and_the_help_says_so():
    assert limit_arg("0") is None and limit_arg("none") is None and limit_arg("1MB/s") == 1_000_000
    peer = next(c for c in _commands(build_parser()) if c.prog == "swarmpull peer")
    assert "0 or none: no limit" in peer.format_help().replace("\n", " ").replace("  ", " ")


def test_peer_defaults_match_its_siblings():
    args = build_parser().parse_args(["peer", "--supernode", SN])
    assert args.listen == HostPort("0.0.0.0", 65002)  # pieces: for other nodes
    assert args.api_listen == HostPort("127.0.0.1", 65000)  # local only
    assert args.data_dir == Path("/var/lib/swarmpull/peer")
    proxy = build_parser().parse_args(["proxy", "--supernode", SN])
    assert proxy.listen == HostPort("127.0.0.1", 65001) and proxy.data_dir == Path("/var/lib/swarmpull/proxy")
    supernode = build_parser().parse_args(["supernode"])
    assert supernode.listen == HostPort("0.0.0.0", 65003)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["peer"], "--supernode"),
        (["proxy"], "--supernode"),
        (["peer", "--supernode", SN, "--bogus"], "unrecognized arguments: --bogus"),
        (["peer", "--supernode", SN, "--listen", "nowhere"], "HOST:PORT"),
        (["peer", "--supernode", SN, "--cache-size", "lots"], "not a size"),
        (["peer", "--supernode", SN, "--labels", "zone=a,floor=3"], "unknown labels floor"),
        ([*PLAIN_PEER, "--upload-limit", "10B/s"], "at least 1 KiB/s"),
        ([*PLAIN_PEER, "--listen", "127.0.0.1:7000", "--api-listen", "127.0.0.1:7000"],
         "--listen and --api-listen are both 127.0.0.1:7000"),
        ([*PLAIN_PEER, "--proxy-listen", "127.0.0.1:65000"],
         "--api-listen and --proxy-listen are both 127.0.0.1:65000"),
        ([*PLAIN_PEER, "--proxy-listen", "127.0.0.1:0", "--default-registry", "a b"], "a b"),
        (["supernode", "--insecure-cluster", "--redis", "localhost:6379"], "--redis needs a redis://"),
        (["supernode"], "give --tls-dir DIR (mutual TLS with the cluster CA, see docs/SECURITY.md) or "
                        "--insecure-cluster"),
        (["peer", "--supernode", SN], "give --tls-dir DIR"),
        (["proxy", "--supernode", SN], "give --tls-dir DIR"),
        (["get", "http://h/f", "-o", "f", "--supernode", SN], "give --tls-dir DIR"),
        (["preheat", "img:v1"], "give --tls-dir DIR"),
        ([*PLAIN_PEER, "--tls-dir", "x"], "--tls-dir: not allowed with argument --insecure-cluster"),
        (["supernode", "--tls-dir", "/nonexistent"], "--tls-dir: /nonexistent/"),
        (["get", "http://h/f", "-o", "f", "--header", "no colon"], "a header looks like"),
        (["get", "ftp://h/f", "-o", "f"], "not an http(s) URL"),
        (["get", "http://h/f"], "-o/--output"),
        (["containerd-config"], "name at least one --registry"),
        (["containerd-config", "--registry", "a/b"], "a registry is HOST[:PORT]"),
        (["containerd-config", "--all", "--hold", "--remove"], "not allowed with argument --hold"),
        (["benchmarks", "--seconds", "x"], "invalid float"),
        (["ca", "issue", "--ca", "x", "--name", "peer 1", "--out", "y"], "invalid name"),
    ],
)  # fmt: skip
def test_every_usage_error_exits_2_with_one_line(capsys, argv, message):
    assert run(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith("swarmpull")


def test_get_summary_names_size_time_and_sources():
    fetched = Fetched(3 << 20, {"peer": 2 << 20, "seed": 1 << 20, "local": 0}, cpu_here=0.05, cpu_daemon=0.1)
    line = get_summary(fetched, Path("big.bin"), 2.0)
    assert line == (
        "swarmpull: got 3.0 MiB into big.bin in 2.0 s (1.5 MiB/s): 2.0 MiB from peers, "
        "1.0 MiB from the seed, 0 B from the upstream; CPU 15.89 s/GB here, 31.79 s/GB in the daemon"
    )
    held = get_summary(Fetched(1 << 20, {"local": 1 << 20}), None, 0.1)
    assert "into stdout" in held and held.endswith("1.0 MiB already on this node; CPU 0.00 s/GB here")


def test_a_command_line_default_is_its_configs_default():
    """What an operator gets without a flag is what the simulator and the tests model
    (the seed's upload slots were 16 on the command line and 64 in the config)."""
    by_design = {  # the daemons' listen addresses and homes; lists parsed into tuples
        "listen", "data_dir", "supernodes", "upstream_allow", "origin_limits", "preheat_limit",
    }  # fmt: skip
    for argv, config in (
        (["supernode"], SupernodeConfig()),
        (["peer", "--supernode", SN], PeerConfig(data_dir=Path("/unused"))),
    ):
        args = vars(build_parser().parse_args(argv))
        differ = {
            f.name: (args[f.name], getattr(config, f.name))
            for f in fields(config)
            if f.name in args and f.name not in by_design and args[f.name] != getattr(config, f.name)
        }
        assert not differ, f"{argv[0]}: command line against config: {differ}"
