"""The Dockerfile, read by BuildKit's own parser (the ``dockerfile`` package): two stages,
the run stage unprivileged and running swarmpull, and a build context that holds every
package pyproject.toml installs (.dockerignore lets in only what is copied)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import dockerfile

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = dockerfile.parse_file(str(ROOT / "Dockerfile"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in COMMANDS:
        if command.cmd == "FROM":
            stages.append([])
        stages[-1].append(command)
    return stages


def _context_sources() -> list[str]:
    """What COPY takes from the build context (not from another stage)."""
    return [
        source
        for command in COMMANDS
        if command.cmd == "COPY" and not any(flag.startswith("--from=") for flag in command.flags)
        for source in command.value[:-1]
    ]


def test_the_run_stage_is_unprivileged_and_runs_swarmpull():
    stages = _stages()
    assert len(stages) >= 2
    run = stages[-1]
    # the run stage gets the installed virtualenv from the build stage, nothing else
    copies = [command for command in run if command.cmd == "COPY"]
    assert [command.flags for command in copies] == [("--from=build",)]
    users = [command.value[0] for command in run if command.cmd == "USER"]
    assert users and users[-1].partition(":")[0] not in ("0", "root")
    entrypoint = next(command for command in run if command.cmd == "ENTRYPOINT")
    assert entrypoint.json and list(entrypoint.value) == list(PYPROJECT["project"]["scripts"])


def test_the_build_context_holds_every_package_and_only_what_is_copied():
    sources = _context_sources()
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.removesuffix("*") in sources, f"{pattern} is installed but not copied"
    assert PYPROJECT["project"]["readme"] in sources and "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
    # .dockerignore: everything out, then back in exactly what COPY takes
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "**"
    allowed = {rule.removeprefix("!") for rule in rules if rule.startswith("!")}
    assert allowed == set(sources)
    assert not any(
        fnmatch.fnmatch(source, rule) for rule in rules[1:] if not rule.startswith("!") for source in sources
    )
