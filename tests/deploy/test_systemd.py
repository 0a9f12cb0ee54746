"""deploy/systemd: the units as systemd reads them (``systemd-analyze verify``, and its
offline security review), their hardening, and their command lines through the real
parser, with the options each unit's header shows as its example."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.commands import parse_command_line

UNITS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "systemd").glob("*.service"))
SWARMPULL = "/usr/local/bin/swarmpull"
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian: systemd)"
)


def _service(unit: Path) -> dict[str, list[str]]:
    """The [Service] section, each key with every value it is given."""
    parser = configparser.RawConfigParser(strict=False, dict_type=_MultiDict, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return {key: value.split("\n") for key, value in parser["Service"].items()}


class _MultiDict(dict):
    """Repeated keys (LoadCredential=, SystemCallFilter=) kept, not overwritten."""

    def __setitem__(self, key, value):
        if key in self and isinstance(value, list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _runnable_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at this checkout's swarmpull (verify checks it)."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(SWARMPULL, str(Path(sys.executable).with_name("swarmpull"))))
    return copy


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_verifies_without_a_warning(unit, tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(_runnable_copy(unit, tmp_path))],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr


@needs_systemd_analyze
def test_verify_reports_a_misspelt_directive(tmp_path):
    unit = _runnable_copy(UNITS[0], tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_exposure_is_low(unit, tmp_path):
    # systemd's own review of the sandbox: 0 is locked down, 10 is none at all
    command = ["systemd-analyze", "security", "--offline=yes", "--threshold=20"]  # tenths: 2.0
    result = subprocess.run([*command, str(_runnable_copy(unit, tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_is_hardened(unit):
    service = _service(unit)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "DynamicUser": "yes",
        "CapabilityBoundingSet": "",
        "LimitNOFILE": "1048576",
    }.items():
        assert service[key] == [value], key
    # the key reaches the daemon through systemd's credentials, never a readable file
    assert {c.partition(":")[0] for c in service["LoadCredential"]} == {"ca.pem", "cert.pem", "key.pem"}


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_command_lines_parse(unit):
    service = _service(unit)
    example = next(line for line in unit.read_text().splitlines() if "SWARMPULL_ARGS=" in line)
    example_args = shlex.split(example.partition("SWARMPULL_ARGS=")[2])
    commands = service.get("ExecStartPre", []) + service["ExecStart"] + service.get("ExecStopPost", [])
    for command in commands:
        argv = shlex.split(command.removeprefix("+"))
        assert argv[0] == SWARMPULL
        argv = [arg.replace("%d", "/run/credentials/unit").replace("%H", "node-7") for arg in argv[1:]]
        if "$SWARMPULL_ARGS" in argv:
            argv.remove("$SWARMPULL_ARGS")
            argv += example_args
        args = parse_command_line(argv)
        if args.command == "peer":
            # the daemon's store is the directory systemd makes for its user
            assert str(args.data_dir) == "/var/lib/" + service["StateDirectory"][0]
