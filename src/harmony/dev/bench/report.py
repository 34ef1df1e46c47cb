"""The benchmark's report: the machine's facts, the summary line, the JSON file and the chart."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["SUMMARY_KEYS", "machine_facts", "summary", "write"]

# The keys the last printed line always carries (null when the part that measures it was
# skipped or failed), so scripts comparing runs can rely on them.
SUMMARY_KEYS = (
    "ceiling_rps",
    "ingest_rps",
    "ingest_over_ceiling",
    "max_routed_per_s",
    "routed_over_ceiling",
    "cpu_ms_per_routed",
    "p99_create_to_delivery_ms",
    "p99_webhook_ms",
)
REPORT_NAME = "latest.json"
CHART_NAME = "latest.png"


def _first_line_with(path: str, prefix: str) -> str | None:
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _git_commit() -> str | None:
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() or None


def machine_facts() -> dict[str, Any]:
    """Cores, CPU model, memory, OS and Python; the runner adds PostgreSQL's version."""
    memory = _first_line_with("/proc/meminfo", "MemTotal")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _first_line_with("/proc/cpuinfo", "model name") or platform.processor(),
        "memory_gib": round(int(memory.split()[0]) / 1024 / 1024, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "harmony_commit": _git_commit(),
    }


def _ratio(numerator: float | None, denominator: float | None, digits: int = 4) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the last line prints, from the full results."""
    ceiling = results.get("ceiling", {}).get("ceiling_rps")
    ingest = results.get("ceiling", {}).get("ingest_rps")
    best = results.get("max_sustained_routed_per_s")
    max_phase = next(
        (p for p in results.get("ladder", []) if p["label"] == results.get("max_phase")), None
    )
    half = results.get("half")
    overload = results.get("overload")
    out: dict[str, Any] = {key: None for key in SUMMARY_KEYS}
    out.update(
        {
            "ceiling_rps": ceiling,
            "ingest_rps": ingest,
            "ingest_over_ceiling": _ratio(ingest, ceiling),
            "max_routed_per_s": best,
            "max_from": results.get("max_from"),
            "routed_over_ceiling": _ratio(best, ceiling),
            "cpu_ms_per_routed": max_phase["cpu_ms_per_routed"] if max_phase else None,
            "statements_per_routed": max_phase["statements_per_routed"] if max_phase else None,
            "commits_per_routed": max_phase["commits_per_routed"] if max_phase else None,
            "p99_create_to_delivery_ms": half["create_to_delivery_ms"]["p99"] if half else None,
            "p99_webhook_ms": half["webhook_ms"]["p99"] if half else None,
        }
    )
    if overload:
        out["overload_routed_per_s"] = overload["routed_per_s"]
        out["overload_p99_create_to_delivery_ms"] = overload["create_to_delivery_ms"]["p99"]
    for key in ("scale", "replicas", "sims"):
        if key in results and isinstance(results[key], dict) and "summary" in results[key]:
            out.update(results[key]["summary"])
    return out


def chart(results: dict[str, Any], path: Path) -> bool:
    """Throughput and p99 create -> delivery against offered rate, with the ceiling; False if
    matplotlib is not installed (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    phases = sorted(
        [*results.get("ladder", []), *(results[k] for k in ("half", "overload") if k in results)],
        key=lambda p: p["offered_per_s"],
    )
    if not phases:
        return False
    offered = [p["offered_per_s"] for p in phases]
    routed = [p["routed_per_s"] for p in phases]
    p99 = [p["create_to_delivery_ms"]["p99"] or 0 for p in phases]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    top.plot(offered, routed, "o-", label="Harmony: routed interactions/s")
    top.plot(offered, offered, ":", color="grey", label="offered")
    ceiling = results.get("ceiling", {}).get("ceiling_rps")
    ingest = results.get("ceiling", {}).get("ingest_rps")
    if ceiling:
        top.axhline(ceiling, color="red", linestyle="--", label=f"ceiling app: {ceiling:.0f} req/s")
    if ingest:
        top.axhline(ingest, color="orange", linestyle="--", label=f"Harmony ingest: {ingest:.0f}/s")
    top.set_yscale("log")
    top.set_ylabel("per second (log)")
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    bottom.plot(offered, p99, "o-", color="purple", label="p99 create -> delivery")
    bottom.set_yscale("log")
    bottom.set_ylabel("ms (log)")
    bottom.set_xlabel("offered interactions/s")
    bottom.legend(fontsize=8)
    bottom.grid(True, which="both", alpha=0.3)
    machine = results.get("machine", {})
    figure.suptitle(
        f"harmony bench {results.get('started_at', '')} - {machine.get('nproc')} x "
        f"{machine.get('cpu_model')}, PostgreSQL {machine.get('postgresql', '?')}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) < 0.1:
            value = f"{value:.4f}"
        else:
            value = f"{value:.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value}{unit}"


def markdown(results: dict[str, Any]) -> str:
    """The summary as the README's table, with the machine it came from."""
    out = results["summary"]
    machine = results.get("machine", {})
    half = results.get("half") or {}
    rows = [
        ("ceiling app (wrk)", _fmt(out["ceiling_rps"], " req/s")),
        ("Harmony ingest (wrk)", _fmt(out["ingest_rps"], " req/s")),
        ("ingest / ceiling", _fmt(out["ingest_over_ceiling"])),
        (
            f"max routed interactions/s ({out.get('max_from') or '-'})",
            _fmt(out["max_routed_per_s"]),
        ),
        ("routed / ceiling", _fmt(out["routed_over_ceiling"])),
        ("Harmony CPU ms per routed interaction (at the max)", _fmt(out["cpu_ms_per_routed"])),
        (
            "SQL statements / commits per routed",
            f"{_fmt(out.get('statements_per_routed'))} / {_fmt(out.get('commits_per_routed'))}",
        ),
        (
            f"create -> delivery p99 at half the max ({_fmt(half.get('offered_per_s'))}/s)",
            _fmt(out["p99_create_to_delivery_ms"], " ms"),
        ),
        ("webhook answer p99 at half the max", _fmt(out["p99_webhook_ms"], " ms")),
        (
            "overload (twice the max): routed/s, delivery p99",
            f"{_fmt(out.get('overload_routed_per_s'))}, "
            f"{_fmt(out.get('overload_p99_create_to_delivery_ms'), ' ms')}",
        ),
    ]
    optional = [
        ("CPU per routed, 10,000 agents / 100", "scale_cpu_ratio_agents", ""),
        ("CPU per routed, 50,000 waiting / 100", "scale_cpu_ratio_waiting", ""),
        ("`GET /v1/agents?limit=100` p99 at 10,000 agents", "agents_p99_ms_at_many_agents", " ms"),
        ("`GET /v1/queues` p50 at 50,000 waiting", "queues_p50_ms_at_many_waiting", " ms"),
        ("simulators as peers: routed/s", "sims_routed_per_s", ""),
        ("simulators: create -> delivery p99", "sims_p99_create_to_delivery_ms", " ms"),
        (
            f"2 replicas: max routed/s ({out.get('replicas2_max_from') or 'sustained'})",
            "replicas2_max_routed_per_s",
            "",
        ),
        ("2 replicas / 1", "replicas2_over_1", ""),
    ]
    rows += [(label, _fmt(out[key], unit)) for label, key, unit in optional if key in out]
    lines = ["| figure | value |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    others = [
        p.get("others_cpu_pct")
        for p in [*results.get("ladder", []), half]
        if p and p.get("others_cpu_pct") is not None
    ]
    lines.append("")
    lines.append(
        f"{results.get('started_at', '')}, commit {machine.get('harmony_commit')}: "
        f"{machine.get('nproc')} cores ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gib')} GiB, PostgreSQL {machine.get('postgresql', '?')}, "
        f"Python {machine.get('python')}"
        + (
            f"; the rest of the machine used {min(others):.0f}-{max(others):.0f}% of a core "
            "during the routing phases"
            if others
            else ""
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``latest.json`` and ``latest.md`` (and ``latest.png`` when matplotlib is there)
    into ``out``; ``quick.*`` for a quick run."""
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / ("quick.json" if results["options"].get("quick") else REPORT_NAME)
    report_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    written = [report_path]
    table_path = report_path.with_suffix(".md")
    table_path.write_text(markdown(results))
    written.append(table_path)
    chart_path = report_path.with_suffix(".png")
    if chart(results, chart_path):
        written.append(chart_path)
    return written
