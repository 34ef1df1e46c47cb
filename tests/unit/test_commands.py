"""The command table: every command has a handler, and every adapter's event types become one."""

from __future__ import annotations

import ast
import inspect
import sys
from dataclasses import fields
from pathlib import Path
from typing import get_args

import pytest

import harmony.routing
from harmony.routing.commands import COMMAND_HANDLERS, PLAIN_USE_CASES, Command


def test_every_command_has_one_handler() -> None:
    assert set(COMMAND_HANDLERS) == set(get_args(Command))


@pytest.mark.parametrize("command", list(PLAIN_USE_CASES), ids=lambda c: c.__name__)
def test_a_plain_command_names_exactly_its_use_case_keywords(command: type) -> None:
    parameters = inspect.signature(PLAIN_USE_CASES[command]).parameters
    keywords = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {f.name for f in fields(command)} == keywords


def test_routing_imports_only_the_standard_library_and_harmony_errors() -> None:
    allowed = set(sys.stdlib_module_names) | {"harmony"}
    for path in Path(harmony.routing.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("harmony"):
                    assert name.startswith(("harmony.routing", "harmony.errors")), (
                        f"{path.name} imports {name}"
                    )
