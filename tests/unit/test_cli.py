"""What a new user meets first: `harmony --version`, `--help`, and a port that is taken."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import harmony
from harmony.cli import build_parser, main

SRC = str(Path(harmony.__file__).resolve().parents[1])


def _help(*command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_version_prints_harmonys_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"harmony {harmony.__version__}"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("sim-acd", ["--port PORT port to listen on (default: 8101)", "(default: generic)"]),
        (
            "sim-crm",
            [
                "--accept-delay SECONDS seconds from a delivery",
                "(default: 1.0)",
                "--trickle PER_SECOND interactions created per second (default: 0.0)",
                "--jitter FRACTION",
            ],
        ),
        (
            "demo",
            [
                "--count N interactions to create (default: 100)",
                "--timeout SECONDS seconds to wait for every interaction to complete "
                "(default: 300.0)",
                "--log-level LEVEL DEBUG, INFO, WARNING or ERROR (default: WARNING)",
                "--seed FILE seed file; default:",
            ],
        ),
        (
            "up",
            [
                "--acd-port PORT the ACD simulator's port (default: 8101)",
                "--voice-seconds SECONDS mean voice call length in seconds",
                "var/harmony-up.db",
            ],
        ),
    ],
)
def test_help_shows_each_options_default_and_unit(
    command: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(command, capsys=capsys)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in `harmony {command} --help`:\n{text}"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_help_names_the_default_database(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(command, capsys=capsys)
    assert "default: HARMONY_DATABASE_URL, else sqlite+aiosqlite:///./var/harmony.db" in text


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"harmony {name} {action.option_strings} has no help"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port with a listener on it for the test's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "HARMONY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/busy.db",
    }
    return subprocess.run(
        [sys.executable, "-m", "harmony.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["serve", "--port", "{busy}"], "--port or HARMONY_PORT"),
        (["sim-acd", "--port", "{busy}"], "--port"),
        (["sim-crm", "--port", "{busy}", "--no-login"], "--port"),
        (["up", "--port", "{free}", "--acd-port", "{busy}", "--crm-port", "{free}"], "--acd-port"),
    ],
)
def test_a_busy_port_ends_in_one_line_naming_the_port_and_its_option(
    command: list[str], option: str, busy_port: int, tmp_path: Path
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
    args = [arg.format(busy=busy_port, free=free_port) for arg in command]
    result = _run(tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"harmony: cannot listen on 127.0.0.1:{busy_port} (Address already in use); "
        f"choose another port with {option}"
    ]
    assert not (tmp_path / "busy.db").exists(), "nothing should start on a busy port"
