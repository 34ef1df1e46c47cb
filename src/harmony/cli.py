"""`harmony serve | migrate | openapi | sim-acd | sim-crm | demo | up`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from harmony.config import DEV_SECRET, Settings
from harmony.logging import configure_logging
from harmony.seed import Seed, load_seed

# The repository's example, wherever the command is run from; ./examples/seed.json otherwise.
_REPO_SEED = Path(__file__).resolve().parents[2] / "examples" / "seed.json"
DEFAULT_SEED = _REPO_SEED if _REPO_SEED.exists() else Path("examples/seed.json")
UP_DATABASE = Path("var/harmony-up.db")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        sys.exit(f"harmony: invalid configuration:\n{exc}")


def _seed(path: str | None) -> Seed:
    try:
        return load_seed(path or DEFAULT_SEED)
    except (ValueError, ValidationError) as exc:
        sys.exit(f"harmony: {exc}")


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.no_migrate:
        overrides["migrate_on_start"] = False
    if args.seed:
        overrides["seed_file"] = Path(args.seed)
    settings = _settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    from harmony.main import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=None,
        proxy_headers=False,
    )
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    from harmony.clock import SystemClock
    from harmony.db.engine import Database

    async def migrate() -> None:
        db = Database(settings.database_url, SystemClock().now)
        try:
            await db.migrate()
        finally:
            await db.dispose()

    asyncio.run(migrate())
    print(f"migrated {settings.database_url.split('@')[-1]} to head")
    return 0


def openapi_document() -> dict[str, object]:
    """The OpenAPI document of the app as configured by default."""
    from harmony.main import create_app

    return create_app(Settings(migrate_on_start=False)).openapi()


def cmd_openapi(args: argparse.Namespace) -> int:
    text = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_sim_acd(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from harmony.dev.simulators.acd import AcdSimConfig, create_app

    config = AcdSimConfig(
        harmony_url=args.harmony_url,
        secret=args.secret,
        seed=_seed(args.seed),
        adapter=args.adapter,
        voice_calls_per_minute=args.voice_per_minute,
        voice_call_seconds=args.voice_seconds,
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_config=None)
    return 0


def cmd_sim_crm(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from harmony.dev.simulators.crm import CrmSimConfig, create_app

    config = CrmSimConfig(
        harmony_url=args.harmony_url,
        secret=args.secret,
        seed=_seed(args.seed),
        adapter=args.adapter,
        accept_delay=args.accept_delay,
        complete_delay=args.complete_delay,
        jitter=args.jitter,
        trickle_per_second=args.trickle,
        login_agents=not args.no_login,
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_config=None)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from harmony.dev.devstack import StackPorts, free_port, run_demo

    seed = _seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="harmony-demo-") as tmp:
        overrides: dict[str, object] = {"seed_file": Path(args.seed or DEFAULT_SEED)}
        if "HARMONY_DATABASE_URL" not in os.environ:
            overrides["database_url"] = f"sqlite+aiosqlite:///{tmp}/demo.db"
        settings = _settings(**overrides)
        configure_logging(args.log_level, settings.log_format)
        ports = StackPorts(free_port(), free_port(), free_port())
        report = asyncio.run(run_demo(settings, seed, args.count, args.timeout, ports))
    print(report.summary())
    return 0 if report.ok else 1


def cmd_up(args: argparse.Namespace) -> int:
    from harmony.dev.devstack import StackPorts, running_stack

    seed_path = Path(args.seed or DEFAULT_SEED)
    overrides: dict[str, object] = {"seed_file": seed_path}
    if "HARMONY_DATABASE_URL" not in os.environ:
        # The simulators keep their state in memory, so the stack starts from a clean database:
        # work left "offered" by an earlier run would hold capacity nobody remembers.
        for leftover in UP_DATABASE.parent.glob(UP_DATABASE.name + "*"):
            leftover.unlink()
        overrides["database_url"] = f"sqlite+aiosqlite:///{UP_DATABASE}"
    settings = _settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    ports = StackPorts(args.port, args.acd_port, args.crm_port)

    async def up() -> None:
        async with running_stack(
            settings,
            _seed(str(seed_path)),
            ports,
            accept_delay=args.accept_delay,
            complete_delay=args.complete_delay,
            jitter=0.5,
            trickle_per_second=args.trickle,
            voice_calls_per_minute=args.voice_per_minute,
            voice_call_seconds=args.voice_seconds,
        ) as stack:
            print(
                "\nHarmony is routing a trickle of chats and emails. Look at:\n"
                f"  {stack.harmony_url}/docs              the API\n"
                f"  {stack.harmony_url}/v1/queues         what waits, and for how long\n"
                f"  {stack.harmony_url}/v1/agents         who holds what\n"
                f"  {stack.harmony_url}/v1/interactions   every interaction, ?state=completed\n"
                f"  {stack.acd_url}/state             the ACD simulator's view\n"
                f"  {stack.crm_url}/state             the CRM simulator's view\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(up())
    return 0


def _sim_args(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--harmony-url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--secret",
        default=os.environ.get("HARMONY_SIM_SECRET", DEV_SECRET),
        help="whsec_ secret shared with Harmony's adapter (env HARMONY_SIM_SECRET)",
    )
    parser.add_argument("--seed", help=f"seed file (default {DEFAULT_SEED})")
    parser.add_argument("--adapter", default="generic", help="Harmony adapter name to post to")
    parser.add_argument("--log-level", default="INFO")


def _voice_args(parser: argparse.ArgumentParser, per_minute: float) -> None:
    parser.add_argument(
        "--voice-per-minute",
        type=float,
        default=per_minute,
        help=f"voice calls the ACD simulator starts per minute (default {per_minute:g})",
    )
    parser.add_argument(
        "--voice-seconds", type=float, default=20.0, help="mean voice call length (+-50%%)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="harmony", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the Harmony API and outbox relay")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate at start")
    serve.add_argument("--seed", help="upsert profiles, queues and agents from this file at start")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    openapi = sub.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--output", "-o", help="write to this file instead of stdout")
    openapi.set_defaults(func=cmd_openapi)

    sim_acd = sub.add_parser("sim-acd", help="run the ACD simulator")
    _sim_args(sim_acd, 8101)
    _voice_args(sim_acd, per_minute=0.0)
    sim_acd.set_defaults(func=cmd_sim_acd)

    sim_crm = sub.add_parser("sim-crm", help="run the CRM simulator")
    _sim_args(sim_crm, 8102)
    sim_crm.add_argument("--accept-delay", type=float, default=1.0)
    sim_crm.add_argument("--complete-delay", type=float, default=5.0)
    sim_crm.add_argument("--jitter", type=float, default=0.3)
    sim_crm.add_argument("--trickle", type=float, default=0.0, help="interactions per second")
    sim_crm.add_argument(
        "--no-login", action="store_true", help="do not log the seed's agents in at start"
    )
    sim_crm.set_defaults(func=cmd_sim_crm)

    demo = sub.add_parser("demo", help="route N interactions end to end, check each, exit")
    demo.add_argument("--count", type=int, default=100)
    demo.add_argument("--timeout", type=float, default=300.0)
    demo.add_argument("--seed")
    demo.add_argument("--log-level", default="WARNING")
    demo.set_defaults(func=cmd_demo)

    up = sub.add_parser("up", help="Harmony + both simulators + a trickle of work (make run)")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--acd-port", type=int, default=8101)
    up.add_argument("--crm-port", type=int, default=8102)
    up.add_argument("--seed")
    up.add_argument("--trickle", type=float, default=0.5, help="interactions per second")
    up.add_argument("--accept-delay", type=float, default=2.0)
    up.add_argument("--complete-delay", type=float, default=8.0)
    _voice_args(up, per_minute=4.0)
    up.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harmony`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
