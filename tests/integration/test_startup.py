"""What the served process does once the application has started."""

from __future__ import annotations

import gc
from pathlib import Path

from harmony.main import create_app
from tests.conftest import make_settings


async def test_a_served_app_freezes_what_start_up_made_and_a_built_one_does_not(
    tmp_path: Path,
) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/harmony.db")
    gc.unfreeze()
    try:
        plain = create_app(settings, run_relay=False)
        async with plain.router.lifespan_context(plain):
            assert gc.get_freeze_count() == 0

        served = create_app(settings, run_relay=False, freeze_heap=True)
        async with served.router.lifespan_context(served):
            # Start-up's objects (tables, compiled statements, the app) are out of the
            # collector's sight: a full collection does not scan them again.
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()  # what this test froze becomes collectable again
