"""Benchmark results: rows with their same-run baseline, target checks, table and JSON."""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import orjson
import psutil

from simulator import FleetConfig, iter_records
from telemetry.contract import decode, encode, validate

_log = logging.getLogger(__name__)


class Row(TypedDict):
    """One figure, next to the baseline it is compared with (None: no baseline applies)."""

    subject: str
    metric: str
    value: float
    unit: str
    baseline: str | None
    baseline_value: float | None
    ratio: float | None


class Target(TypedDict):
    """One product target: the rule, what was measured and whether it was met."""

    target: str
    required: str
    measured: str
    met: bool


def row(
    subject: str,
    metric: str,
    value: float,
    unit: str,
    baseline: tuple[str, float] | None = None,
) -> Row:
    """Build a row; the ratio is value / baseline value, None if there is no baseline."""
    name, base = baseline if baseline is not None else (None, None)
    ratio = value / base if base else None
    return Row(
        subject=subject,
        metric=metric,
        value=value,
        unit=unit,
        baseline=name,
        baseline_value=base,
        ratio=ratio,
    )


# On Linux guest time is already counted in user and nice time: summing it again
# would inflate the total.
_NOT_IN_TOTAL = frozenset(("guest", "guest_nice"))


def cpu_times() -> dict[str, float]:
    """CPU seconds of the whole machine so far, all cores, per state (psutil's fields)."""
    return {k: float(v) for k, v in psutil.cpu_times()._asdict().items()}


class CpuShares(NamedTuple):
    """How the machine's CPU time (all cores) was spent between two :func:`cpu_times`.

    Attributes:
        busy_pct: Time this VM ran anything (user, system, interrupts), as % of all cores'
            time; idle, I/O wait and steal are not busy.
        steal_pct: Time this VM had work to run while the hypervisor ran another guest
            instead, as % of all cores' time. A shared VM's "slow phases" show up here.
    """

    busy_pct: float
    steal_pct: float


def cpu_shares(before: dict[str, float], after: dict[str, float]) -> CpuShares:
    """Busy and steal time between two snapshots, each as % of all cores' time."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after if k not in _NOT_IN_TOTAL}
    total = sum(delta.values())
    if total <= 0:
        return CpuShares(0.0, 0.0)
    steal = delta.get("steal", 0.0)
    busy = total - delta.get("idle", 0.0) - delta.get("iowait", 0.0) - steal
    return CpuShares(100.0 * busy / total, 100.0 * steal / total)


_PROBE_RECORDS = 200
_PROBE_ROUNDS = 5


def speed_probe() -> float:
    """Single-thread speed of this machine right now, in µs; lower is faster.

    The same machine ran the same build's pipeline benchmark at 20,218 records/s one day
    and 5,986 the next, its bare consumer at 599,477 and 186,303: absolute figures from
    different runs compare only next to a probe taken with them. The probe is the per-record
    work every service does: decode, validate and encode one simulated v1 record, timed
    over a fixed set of records, best of five rounds (the least disturbed one).

    Returns:
        Microseconds per record.
    """
    records = [
        encode(r)
        for r in iter_records(FleetConfig(vehicles=_PROBE_RECORDS // 10, duration_s=10, seed=1))
    ]
    best = math.inf
    for _ in range(_PROBE_ROUNDS):
        began = time.perf_counter()
        for payload in records:
            encode(validate(decode(payload)))
        best = min(best, time.perf_counter() - began)
    return best / len(records) * 1e6


def machine() -> dict[str, Any]:
    """What this benchmark ran on, for the report and docs/benchmarks.md."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text("utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run(
            [mosquitto, "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        mosquitto_version = out.splitlines()[0] if out else "unknown"
    except OSError:
        mosquitto_version = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_1m_at_start": round(os.getloadavg()[0], 2),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        # Which build: a distribution's (PGO + LTO) or pyenv's default ran ~1.2x apart.
        "python_executable": os.path.realpath(sys.executable),
        "mosquitto": mosquitto_version,
        "speed_probe_us_at_start": round(speed_probe(), 2),
    }


@dataclass
class Report:
    """All results of one ``fleetstream bench`` invocation."""

    kind: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # Whole-machine CPU counters when the run began; not part of the JSON.
    cpu_at_start: dict[str, float] = field(default_factory=cpu_times, repr=False)

    def add(self, *rows: Row) -> None:
        """Append rows and log them as they are measured."""
        for r in rows:
            self.rows.append(r)
            _log.info("%s %s = %s %s", r["subject"], r["metric"], _fmt(r["value"]), r["unit"])

    def check(self, target: str, required: str, measured: str, met: bool) -> None:
        """Record whether a product target was met."""
        self.targets.append(Target(target=target, required=required, measured=measured, met=met))

    def finish(self) -> None:
        """Once the run is over: probe the speed again, and record the CPU shares of the run.

        The shares are the machine's busy and steal time since the report was created (see
        :func:`speed_probe` and :class:`CpuShares`).
        """
        shares = cpu_shares(self.cpu_at_start, cpu_times())
        self.machine["busy_pct_during_run"] = round(shares.busy_pct, 1)
        self.machine["steal_pct_during_run"] = round(shares.steal_pct, 1)
        self.machine["speed_probe_us_at_end"] = round(speed_probe(), 2)

    def table(self) -> str:
        """A plain-text table: value, unit, baseline and ratio per row, then the targets."""
        head = ("subject", "metric", "value", "unit", "baseline", "ratio")
        lines = [
            (
                r["subject"],
                r["metric"],
                _fmt(r["value"]),
                r["unit"],
                f"{r['baseline']} ({_fmt(r['baseline_value'])})" if r["baseline"] else "",
                f"{r['ratio']:.2f}x" if r["ratio"] is not None else "",
            )
            for r in self.rows
        ]
        widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(head)]
        out = [
            "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
        probes = [
            f"{self.machine[k]:.2f} µs {when}"
            for k, when in (
                ("speed_probe_us_at_start", "at start"),
                ("speed_probe_us_at_end", "at end"),
            )
            if k in self.machine
        ]
        if probes:
            out.append("")
            out.append(
                "machine speed probe (decode + validate + encode of one record, one thread; "
                f"lower is faster): {', '.join(probes)}"
            )
        if "steal_pct_during_run" in self.machine:
            out.append(
                "CPU time of all cores during the run: busy "
                f"{self.machine['busy_pct_during_run']:.1f} %, stolen by the hypervisor "
                f"{self.machine['steal_pct_during_run']:.1f} % (a shared VM's slow phases)"
            )
        if self.targets:
            out.append("")
            for t in self.targets:
                mark = "MET " if t["met"] else "MISS"
                out.append(f"[{mark}] {t['target']}: required {t['required']}, got {t['measured']}")
        return "\n".join(out)

    def to_json(self) -> bytes:
        """The whole report as indented JSON."""
        data = asdict(self)
        del data["cpu_at_start"]
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    def write(self, out_dir: Path) -> Path:
        """Write ``<kind>-<time>.json`` and ``<kind>-latest.json``; return the first."""
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.started_at.replace(":", "").replace("+0000", "Z")
        path = out_dir / f"{self.kind}-{stamp}.json"
        data = self.to_json()
        path.write_bytes(data)
        (out_dir / f"{self.kind}-latest.json").write_bytes(data)
        return path


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]
