"""schemathesis against the app: the OpenAPI document and the app agree.

Every operation gets schema-valid (positive) and schema-breaking (negative) requests; event bodies
are signed with the adapter's secret (webhook-id = the envelope id) so they reach validation.
Checks: no 5xx, every answer conforms to its documented schema, status and content type, and a
schema-valid request is never refused as malformed or invalid (400 ``malformed_json``, 422
``validation_error``): that would mean the document is looser than validation. Refusals that
depend on what is stored (404 unknown..., 409, a cursor Harmony did not hand out) are allowed.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core import NotSet
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from harmony.main import create_app
from tests.conftest import make_settings
from tests.integration.test_hostile_input import sign_bytes

SCHEMA_REFUSALS = {(400, "malformed_json"), (422, "validation_error")}


# Built at import (schemathesis parametrizes at collection); the app starts, migrating a fresh
# SQLite file, only when the first case runs, and stops when this module is done.
_DATABASE_DIR = Path(tempfile.mkdtemp(prefix="harmony-contract-"))
_APP = create_app(make_settings(f"sqlite+aiosqlite:///{_DATABASE_DIR}/harmony.db"), run_relay=False)
schema = schemathesis.openapi.from_dict(_APP.openapi())
schema.app = _APP


SEEN: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_app() -> Iterator[None]:
    yield
    print(f"schemathesis: {sum(SEEN.values())} requests, by mode and status: {dict(SEEN)}")
    shutdown_lifespans()
    shutil.rmtree(_DATABASE_DIR, ignore_errors=True)


def _signed(case: Any) -> tuple[bytes, dict[str, str]]:
    """The body as sent, with Standard Webhooks headers that match it."""
    if isinstance(case.body, NotSet):
        body = b""
    elif isinstance(case.body, bytes):
        body = case.body
    else:
        body = json.dumps(case.body, separators=(",", ":")).encode()
    event_id = case.body.get("id") if isinstance(case.body, dict) else None
    if not isinstance(event_id, str) or not re.fullmatch(r"[!-~]{1,128}", event_id):
        event_id = f"evt_{uuid.uuid4().hex}"  # not sendable as a header: the app must say 422
    headers = sign_bytes(event_id, body)
    del headers["content-type"]  # the case's own, when it tries another one
    return body, headers


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_app_keeps_its_documented_contract(case: Any) -> None:
    checks = [response_schema_conformance, status_code_conformance, content_type_conformance]
    kwargs: dict[str, Any] = {}
    if case.path.endswith("/events"):
        body, headers = _signed(case)
        given = case.headers or {}
        if not any(name.lower() == "content-type" for name in given):
            headers["content-type"] = "application/json"
        case.headers = {**given, **headers}
        kwargs["data"] = body
    response = case.call(**kwargs)
    mode = case.meta.generation.mode.value if case.meta is not None else "explicit"
    SEEN[f"{mode} {response.status_code} {_code(response.text) or ''}".strip()] += 1
    assert response.status_code < 500, f"{case.method} {case.path}: {response.text[:300]}"
    case.validate_response(response, checks=checks)
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        refusal = (response.status_code, _code(response.text))
        assert refusal not in SCHEMA_REFUSALS, (
            f"schema-valid request refused: {case.method} {case.formatted_path} "
            f"{case.query} {case.body!r:.300} -> {response.status_code} {response.text[:300]}"
        )


def _code(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None
