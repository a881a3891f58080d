"""Every option is documented, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def help_text(*command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli", *command, "--help"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return done.stdout


COMMANDS = ("train", "predict", "update", "runs", "compare", "generate")


def options_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)) - {"--help"}


@pytest.mark.parametrize(
    ("command", "sample"),
    [
        (["train"], "--no-plot"),
        (["predict"], "--target"),
        (["update"], "--data"),
        (["runs"], "--limit"),
        (["compare"], "--fail-on-drift"),
        (["generate"], "--samples"),
    ],
)
def test_every_option_in_help_is_in_the_readme(command: list[str], sample: str) -> None:
    options = options_in(help_text(*command))
    assert sample in options  # the help was really read
    missing = {opt for opt in options if opt not in README}
    assert not missing, f"options missing from README.md: {sorted(missing)}"


def test_every_option_in_the_readme_exists() -> None:
    known = {"--help"} | options_in(help_text())
    for command in COMMANDS:
        known |= options_in(help_text(command))
    pip_and_tools = {"--check", "--no-standardize", "--version"}
    pip_and_tools |= {"--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint"}
    pip_and_tools |= {"--rdzv-id"}  # torchrun's own
    unknown = options_in(README) - known - pip_and_tools
    assert not unknown, f"README.md documents options linreg does not have: {sorted(unknown)}"


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```sh\n(python3 -m venv .*?)\n```", README)
    assert len(commands) == 2, "the README shows the demo and the test command"
    demo, tests = commands
    assert "linreg train" in demo and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_every_command_is_in_the_readme() -> None:
    commands = re.findall(r"^  (\w+) ", help_text().split("Commands:")[1], flags=re.M)
    assert set(commands) == set(COMMANDS)
    for command in commands:
        assert f"linreg {command}" in README


def test_readme_has_the_exit_code_table() -> None:
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 130 |", "| 143 |"):
        assert code in README
