"""/docs and /redoc work without the internet: every asset they load is served by Harmony."""

from __future__ import annotations

import re

import httpx
import pytest

from harmony.config import Settings
from harmony.main import create_app

# src="..." and href="..." in HTML, spec-url="..." for ReDoc, url: '...' in Swagger UI's script.
ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_every_asset_from_harmony(page: str) -> None:
    app = create_app(Settings(migrate_on_start=False), run_relay=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://harmony.test"
    ) as client:
        html = await client.get(page)
        assert html.status_code == 200
        assert "text/html" in html.headers["content-type"]
        assert not re.findall(r"(?:https?:)?//[\w.-]+", html.text), (
            f"{page} names an outside host:\n{html.text}"
        )
        assets = [a or b for a, b in ASSET.findall(html.text)]
        assert any(asset.endswith(".js") for asset in assets), html.text
        assert "/openapi.json" in assets
        for asset in assets:
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
            assert answer.content, asset
