"""`harmony serve | migrate | openapi | lifecycle | sim-acd | sim-crm | demo | up | bench`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from harmony import __version__
from harmony.config import DEFAULT_SQLITE_URL, DEV_SECRET, DefaultSettings, Settings
from harmony.logging import configure_logging
from harmony.seed import Seed, load_seed

# The repository's example, wherever the command is run from; ./examples/seed.json otherwise.
_REPO_SEED = Path(__file__).resolve().parents[2] / "examples" / "seed.json"
DEFAULT_SEED = _REPO_SEED if _REPO_SEED.exists() else Path("examples/seed.json")
UP_DATABASE = Path("var/harmony-up.db")
log = structlog.get_logger("harmony.cli")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        sys.exit(f"harmony: invalid configuration:\n{exc}")


def _level(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.log_level]


def _seed(path: str | None) -> Seed:
    try:
        return load_seed(path or DEFAULT_SEED)
    except (ValueError, ValidationError) as exc:
        sys.exit(f"harmony: {exc}")


def port_unavailable(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on right now, or None if it can.

    Checked before anything starts, so a busy port ends in one line that names the option to
    change rather than in uvicorn's error after migrations, or a traceback from ``up``.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            # uvicorn sets SO_REUSEADDR too: a port with connections in TIME_WAIT is free for it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _exit_if_busy(*listeners: tuple[str, int, str]) -> None:
    """Exit with one line per (host, port, how to change it) that cannot be listened on."""
    problems = [
        f"harmony: cannot listen on {host}:{port} ({reason}); choose another port with {option}"
        for host, port, option in listeners
        if (reason := port_unavailable(host, port)) is not None
    ]
    if problems:
        sys.exit("\n".join(problems))


def _port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, not {port}")
    return port


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _database_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {"database_url": args.database} if args.database else {}


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = _database_overrides(args)
    if args.no_migrate:
        overrides["migrate_on_start"] = False
    if args.seed:
        overrides["seed_file"] = Path(args.seed)
    settings = _settings(**overrides)
    host = args.host or settings.host
    port = args.port or settings.port
    _exit_if_busy((host, port, "--port or HARMONY_PORT"))
    configure_logging(settings.log_level, settings.log_format)
    from harmony.main import create_app

    log.info(
        "harmony_serving",
        version=__version__,
        url=f"http://{host}:{port}",
        database=_display_url(settings.database_url),
    )
    uvicorn.run(
        create_app(settings, freeze_heap=True),
        host=host,
        port=port,
        log_config=None,
        proxy_headers=False,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(**_database_overrides(args))
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
    print(f"migrated {_display_url(settings.database_url)} to head")
    return 0


def openapi_document() -> dict[str, object]:
    """The OpenAPI document of the app as configured by default, whatever the environment."""
    from harmony.main import create_app

    return create_app(DefaultSettings(migrate_on_start=False)).openapi()


def cmd_openapi(args: argparse.Namespace) -> int:
    text = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    from harmony.routing.lifecycle import document

    text = document()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_sim_acd(args: argparse.Namespace) -> int:
    _exit_if_busy((args.host, args.port, "--port"))
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
    _exit_if_busy((args.host, args.port, "--port"))
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
        decline_share=args.decline_share,
        ignore_share=args.ignore_share,
        abandon_share=args.abandon_share,
        transfer_share=args.transfer_share,
        abandon_within=args.abandon_within,
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_config=None)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from harmony.dev.devstack import StackPorts, free_ports, run_demo

    seed = _seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="harmony-demo-") as tmp:
        overrides: dict[str, object] = {"seed_file": Path(args.seed or DEFAULT_SEED)}
        if "HARMONY_DATABASE_URL" not in os.environ:
            overrides["database_url"] = f"sqlite+aiosqlite:///{tmp}/demo.db"
        settings = _settings(**overrides)
        configure_logging(args.log_level, settings.log_format)
        ports = StackPorts(*free_ports(3))
        report = asyncio.run(run_demo(settings, seed, args.count, args.timeout, ports))
    print(report.summary())
    return 0 if report.ok else 1


def cmd_up(args: argparse.Namespace) -> int:
    from harmony.dev.devstack import StackPorts, StackStartFailed, running_stack

    _exit_if_busy(
        ("127.0.0.1", args.port, "--port"),
        ("127.0.0.1", args.acd_port, "--acd-port"),
        ("127.0.0.1", args.crm_port, "--crm-port"),
    )
    seed_path = Path(args.seed or DEFAULT_SEED)
    overrides: dict[str, object] = {"seed_file": seed_path}
    if "HARMONY_DATABASE_URL" not in os.environ:
        # The simulators keep their state in memory, so the stack starts from a clean database:
        # agents left ready by an earlier run would never be announced to the new ACD simulator
        # (nothing routes), and work left "offered" would hold capacity nobody remembers.
        for leftover in UP_DATABASE.parent.glob(UP_DATABASE.name + "*"):
            leftover.unlink()
        overrides["database_url"] = f"sqlite+aiosqlite:///{UP_DATABASE}"
    settings = _settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    # Harmony logs each interaction state change; the in-process simulators would say each
    # step a second time, so only their warnings show (their /state pages show the rest).
    logging.getLogger("harmony.dev.simulators").setLevel(max(logging.WARNING, _level(settings)))
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

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(up())
    except StackStartFailed as exc:
        sys.exit(f"harmony: {exc} (see the log above)")
    return 0


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"rates are numbers separated by commas: {text}") from exc
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive: {text}")
    return rates


def cmd_bench(args: argparse.Namespace) -> int:
    from harmony.dev.bench.options import BenchOptions
    from harmony.dev.bench.runner import main

    given: dict[str, Any] = {
        "admin_dsn": args.database,
        "agents": args.agents,
        "out": Path(args.out),
        "skip": frozenset(args.skip),
        "keep_workdir": args.keep_workdir,
        "quick": args.quick,
    }
    for name in ("rates", "duration", "warmup", "quiet_wait"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    options = BenchOptions.quick_defaults(**given) if args.quick else BenchOptions(**given)
    return main(options)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, unless there is none or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or action.default is False or "default" in help_text:
            return help_text
        return super()._get_help_string(action) or ""


def _subcommand(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, detail: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary}. {detail}".strip(),
        formatter_class=_HelpFormatter,
    )


DATABASE_HELP = (
    "database URL (sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASS@HOST:PORT/DB); "
    f"default: HARMONY_DATABASE_URL, else {DEFAULT_SQLITE_URL}"
)


def _sim_args(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=_port_number, default=port, metavar="PORT", help="port to listen on"
    )
    parser.add_argument(
        "--harmony-url",
        default="http://127.0.0.1:8000",
        metavar="URL",
        help="where Harmony's API listens",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("HARMONY_SIM_SECRET", DEV_SECRET),
        help="whsec_ secret shared with Harmony's adapter; default: HARMONY_SIM_SECRET, "
        "else the development secret",
    )
    parser.add_argument("--seed", metavar="FILE", help=f"seed file; default: {DEFAULT_SEED}")
    parser.add_argument("--adapter", default="generic", help="Harmony adapter name to post to")
    parser.add_argument(
        "--log-level", default="INFO", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR"
    )


def _voice_args(parser: argparse.ArgumentParser, per_minute: float) -> None:
    parser.add_argument(
        "--voice-per-minute",
        type=float,
        metavar="N",
        default=per_minute,
        help="voice calls the ACD simulator starts per minute",
    )
    parser.add_argument(
        "--voice-seconds",
        type=float,
        metavar="SECONDS",
        default=20.0,
        help="mean voice call length in seconds (each call +-50%%)",
    )


def _share(value: str) -> float:
    share = float(value)
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction between 0 and 1")
    return share


def _delay_args(parser: argparse.ArgumentParser, accept: float, complete: float) -> None:
    parser.add_argument(
        "--accept-delay",
        type=float,
        metavar="SECONDS",
        default=accept,
        help="seconds from a delivery to the CRM simulator's interaction.accepted",
    )
    parser.add_argument(
        "--complete-delay",
        type=float,
        metavar="SECONDS",
        default=complete,
        help="seconds from accepted to interaction.completed",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="harmony", description=__doc__)
    parser.add_argument("--version", action="version", version=f"harmony {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = _subcommand(
        sub,
        "serve",
        "run the Harmony API and outbox relay",
        "Settings come from HARMONY_* environment variables (the README's Configuration); "
        "these options override them.",
    )
    serve.add_argument("--host", help="address to listen on; default: HARMONY_HOST, else 127.0.0.1")
    serve.add_argument(
        "--port", type=_port_number, help="port to listen on; default: HARMONY_PORT, else 8000"
    )
    serve.add_argument("--database", metavar="URL", help=DATABASE_HELP)
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate at start")
    serve.add_argument(
        "--seed",
        metavar="FILE",
        help="upsert profiles, queues and agents from this file at start; "
        "default: HARMONY_SEED_FILE, else none",
    )
    serve.set_defaults(func=cmd_serve)

    migrate = _subcommand(sub, "migrate", "apply database migrations and exit", "")
    migrate.add_argument("--database", metavar="URL", help=DATABASE_HELP)
    migrate.set_defaults(func=cmd_migrate)

    openapi = _subcommand(sub, "openapi", "print the OpenAPI document", "")
    openapi.add_argument("--output", "-o", help="write to this file instead of stdout")
    openapi.set_defaults(func=cmd_openapi)

    lifecycle = _subcommand(
        sub, "lifecycle", "print docs/lifecycle.md: the interaction lifecycle table", ""
    )
    lifecycle.add_argument("--output", "-o", help="write to this file instead of stdout")
    lifecycle.set_defaults(func=cmd_lifecycle)

    sim_acd = _subcommand(sub, "sim-acd", "run the ACD simulator", "Its state is in memory only.")
    _sim_args(sim_acd, 8101)
    _voice_args(sim_acd, per_minute=0.0)
    sim_acd.set_defaults(func=cmd_sim_acd)

    sim_crm = _subcommand(sub, "sim-crm", "run the CRM simulator", "Its state is in memory only.")
    _sim_args(sim_crm, 8102)
    _delay_args(sim_crm, accept=1.0, complete=5.0)
    sim_crm.add_argument(
        "--jitter",
        type=float,
        metavar="FRACTION",
        default=0.3,
        help="spread of both delays, as a fraction (0.3: each delay +-30%%)",
    )
    for name, what in (
        ("decline", "offers the agent declines"),
        ("ignore", "offers nobody answers (Harmony's offer timeout takes them back)"),
        ("abandon", "interactions whose customer leaves within --abandon-within seconds"),
        ("transfer", "accepted interactions the agent transfers once"),
    ):
        sim_crm.add_argument(
            f"--{name}-share",
            type=_share,
            metavar="FRACTION",
            default=0.0,
            help=f"share of {what} (0-1)",
        )
    sim_crm.add_argument(
        "--abandon-within",
        type=float,
        metavar="SECONDS",
        default=5.0,
        help="abandoning customers leave at a random moment within this many seconds",
    )
    sim_crm.add_argument(
        "--trickle",
        type=float,
        default=0.0,
        metavar="PER_SECOND",
        help="interactions created per second",
    )
    sim_crm.add_argument(
        "--no-login", action="store_true", help="do not log the seed's agents in at start"
    )
    sim_crm.set_defaults(func=cmd_sim_crm)

    demo = _subcommand(
        sub,
        "demo",
        "route N interactions end to end, check each, exit 0 or 1",
        "Runs Harmony and both simulators on free ports, on a fresh SQLite database in a "
        "temporary directory unless HARMONY_DATABASE_URL is set.",
    )
    demo.add_argument("--count", type=int, default=100, metavar="N", help="interactions to create")
    demo.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=300.0,
        help="seconds to wait for every interaction to complete",
    )
    demo.add_argument("--seed", metavar="FILE", help=f"seed file; default: {DEFAULT_SEED}")
    demo.add_argument(
        "--log-level", default="WARNING", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR"
    )
    demo.set_defaults(func=cmd_demo)

    up = _subcommand(
        sub,
        "up",
        "Harmony + both simulators + a trickle of work, until Ctrl-C (make run)",
        f"Harmony uses {UP_DATABASE}, emptied at each start, unless HARMONY_DATABASE_URL is set.",
    )
    up.add_argument(
        "--port", type=_port_number, default=8000, metavar="PORT", help="Harmony's port"
    )
    up.add_argument(
        "--acd-port",
        type=_port_number,
        default=8101,
        metavar="PORT",
        help="the ACD simulator's port",
    )
    up.add_argument(
        "--crm-port",
        type=_port_number,
        default=8102,
        metavar="PORT",
        help="the CRM simulator's port",
    )
    up.add_argument("--seed", metavar="FILE", help=f"seed file; default: {DEFAULT_SEED}")
    up.add_argument(
        "--trickle",
        type=float,
        default=0.5,
        metavar="PER_SECOND",
        help="interactions created per second",
    )
    _delay_args(up, accept=2.0, complete=8.0)
    _voice_args(up, per_minute=4.0)
    up.set_defaults(func=cmd_up)

    from harmony.dev.bench.options import DEFAULT_ADMIN_DSN, PARTS

    bench = _subcommand(
        sub,
        "bench",
        "measure Harmony on PostgreSQL against this machine's own ceiling",
        "Starts Harmony, fast peers and an open-loop load generator as processes on loopback, "
        "on a database of its own (created and dropped), and writes bench/results/latest.json "
        "and .png (quick.json with --quick). The last line printed is a JSON summary.",
    )
    bench.add_argument(
        "--database",
        default=DEFAULT_ADMIN_DSN,
        metavar="DSN",
        help="PostgreSQL DSN of a user allowed to create databases",
    )
    bench.add_argument(
        "--rates",
        type=_rates,
        metavar="R1,R2,...",
        help="offered interactions/s, increasing (default: 10,20,40,...,640; quick: 10,20,40,80)",
    )
    bench.add_argument(
        "--duration", type=float, metavar="SECONDS", help="measured seconds per rate (default 10)"
    )
    bench.add_argument(
        "--warmup", type=float, metavar="SECONDS", help="seconds before each measure (default 2)"
    )
    bench.add_argument("--agents", type=int, default=100, metavar="N", help="agents logged in")
    bench.add_argument(
        "--quiet-wait",
        type=float,
        metavar="SECONDS",
        help="before each phase, wait up to this long for the rest of the machine to use under "
        "25%% of a core (default 30; quick: 3)",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a short run (under 2 minutes) with the same keys"
    )
    bench.add_argument("--out", default="bench/results", metavar="DIR", help="report directory")
    bench.add_argument(
        "--skip",
        action="append",
        choices=PARTS,
        default=[],
        help="leave a part out (repeatable)",
    )
    bench.add_argument(
        "--keep-workdir", action="store_true", help="keep the logs and raw records of the run"
    )
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harmony`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
