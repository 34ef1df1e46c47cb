"""`harmony demo` tells Harmony's own time apart from the wait for a free agent."""

from __future__ import annotations

from pathlib import Path

from harmony.config import Settings
from harmony.dev.devstack import StackPorts, free_ports, run_demo
from harmony.seed import load_seed
from tests.conftest import SEED


async def test_demo_reports_harmonys_legs_apart_from_the_wait(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/demo.db", seed_file=SEED)
    seed = load_seed(SEED)
    count = 3 * len(seed.agents)
    ports = StackPorts(*free_ports(3))

    report = await run_demo(settings, seed, count, 120.0, ports)

    assert report.ok, report.summary()
    assert len(report.seconds_routing) == count
    assert len(report.seconds_waiting_for_agent) == count
    assert len(report.seconds_delivering) == count
    # Each interaction's delivery leg is part of its end-to-end time (both lists follow the
    # same order), and the ACD acknowledged a routing request only after Harmony received it.
    for delivering, end_to_end in zip(
        report.seconds_delivering, report.seconds_to_deliver, strict=True
    ):
        assert 0 <= delivering <= end_to_end
    assert min(report.seconds_routing) >= 0
    summary = report.summary()
    assert "Harmony's own part:" in summary
    assert (
        "received -> the ACD's acknowledgement of the routing request recorded: median" in summary
    )
    assert (
        "agent.selected received -> the CRM's acknowledgement of the delivery recorded: median"
        in summary
    )
    assert f"({count} interactions for {len(seed.agents)} agents, mostly the wait above)" in summary
