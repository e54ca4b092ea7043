"""What every benchmark shares: statistics, the report (table, JSON, plot), the machine
line, configs and private runtime directories.

A benchmark returns a :class:`Report`: a list of :class:`Row`, each one measure with
kernelsup's samples beside its anchor's (or a note saying why the anchor has none), the
raw samples for plotting, and extra data (outcome counts, parameters). Ratios are always
``kernelsup / anchor`` of the p50: below 1 means kernelsup is faster (or cheaper) for a
latency or a cost, above 1 means it does more for a throughput (see ``Row.better``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

Better = Literal["lower", "higher"]

# Short and under /tmp: IPC socket paths are limited to about 100 bytes. The tests point
# it at a directory of their own to check that nothing outlives a run.
RUNTIME_PREFIX = os.environ.get("KERNELSUP_BENCH_TMP", "/tmp")


# --------------------------------------------------------------------------- stats
def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) with linear interpolation between ranks."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


@attrs.frozen
class Stats:
    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(
            n=len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            mean=sum(values) / len(values),
            min=min(values),
            max=max(values),
        )

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Row:
    """One measure: kernelsup's samples against the anchor's.

    ``anchor_note`` explains a missing or censored anchor ("not detected within 12 s");
    ``anchor_censored_at`` is then the anchor's lower bound (in ``unit``), which bounds
    the ratio from above (``ratio_bound``).
    ``target`` is the issue's goal in words; ``met`` whether the p50 (or the stated
    statistic) reaches it, None when there is no target or it cannot be judged.
    """

    name: str
    unit: str
    kernelsup: list[float]
    anchor_name: str = ""
    anchor: list[float] = attrs.field(factory=list)
    anchor_note: str = ""
    anchor_censored_at: float | None = None
    better: Better = "lower"
    target: str = ""
    met: bool | None = None
    detail: str = ""

    @property
    def ks_stats(self) -> Stats | None:
        return Stats.of(self.kernelsup) if self.kernelsup else None

    @property
    def anchor_stats(self) -> Stats | None:
        return Stats.of(self.anchor) if self.anchor else None

    @property
    def ratio(self) -> float | None:
        ks, an = self.ks_stats, self.anchor_stats
        if ks is None or an is None or an.p50 == 0:
            return None
        return ks.p50 / an.p50

    @property
    def ratio_bound(self) -> float | None:
        """For a censored anchor: the ratio is below this."""
        ks = self.ks_stats
        if ks is None or self.anchor or not self.anchor_censored_at:
            return None
        return ks.p50 / self.anchor_censored_at

    def to_dict(self) -> dict[str, Any]:
        ks, an = self.ks_stats, self.anchor_stats
        return {
            "name": self.name,
            "unit": self.unit,
            "better": self.better,
            "kernelsup": ks.to_dict() if ks else None,
            "anchor_name": self.anchor_name,
            "anchor": an.to_dict() if an else None,
            "anchor_note": self.anchor_note,
            "ratio": self.ratio,
            "ratio_below": self.ratio_bound,
            "target": self.target,
            "met": self.met,
            "detail": self.detail,
            "samples": {"kernelsup": self.kernelsup, "anchor": self.anchor},
        }


@attrs.define
class Report:
    benchmark: str
    mode: str
    params: dict[str, Any] = attrs.field(factory=dict)
    rows: list[Row] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    extra: dict[str, Any] = attrs.field(factory=dict)
    skipped: str = ""
    wall_s: float = 0.0

    def row(self, *args: Any, **kwargs: Any) -> Row:
        r = Row(*args, **kwargs)
        self.rows.append(r)
        return r

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "mode": self.mode,
            "params": self.params,
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
            "extra": self.extra,
            "skipped": self.skipped,
            "wall_s": round(self.wall_s, 2),
        }


# --------------------------------------------------------------------------- machine
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    import zmq

    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "kernelsup": _version("kernelsup"),
        "ipykernel": _version("ipykernel"),
        "jupyter_client": _version("jupyter_client"),
        "trio": _version("trio"),
        "pyzmq": _version("pyzmq"),
        "libzmq": zmq.zmq_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def machine_line(m: Mapping[str, Any]) -> str:
    load = m.get("loadavg_at_start") or []
    return (
        f"machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, "
        f"ipykernel {m['ipykernel']}, jupyter_client {m['jupyter_client']}, "
        f"trio {m['trio']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), "
        f"kernelsup {m['kernelsup']}; load average at start " + "/".join(f"{x:.2f}" for x in load)
    )


# --------------------------------------------------------------------------- table
def _num(x: float | None, unit: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if unit in ("ms", "MB", "%"):
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _stat_cells(s: Stats | None, unit: str) -> list[str]:
    if s is None:
        return ["-", "-", "-", "0"]
    return [_num(s.p50, unit), _num(s.p95, unit), _num(s.p99, unit), str(s.n)]


def table(report: Report) -> str:
    """The report's rows as a Markdown table (it reads in a terminal and pastes into the
    README as it is)."""
    head = [
        "measure",
        "unit",
        "kernelsup p50",
        "p95",
        "p99",
        "n",
        "anchor",
        "p50",
        "p95",
        "p99",
        "n",
        "ratio",
        "target",
    ]
    lines = [head]
    for r in report.rows:
        ratio, bound = r.ratio, r.ratio_bound
        ratio_text = (
            f"{ratio:.3g}x" if ratio is not None else f"<{bound:.2g}x" if bound is not None else "-"
        )
        target = r.target
        if r.target and r.met is not None:
            target = ("met: " if r.met else "MISSED: ") + r.target
        lines.append(
            [
                r.name,
                r.unit,
                *_stat_cells(r.ks_stats, r.unit),
                r.anchor_name + (f" ({r.anchor_note})" if r.anchor_note else ""),
                *_stat_cells(r.anchor_stats, r.unit),
                ratio_text,
                target,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines[1:]]
    return "\n".join(out)


def render(report: Report) -> str:
    parts = [f"## {report.benchmark} ({report.mode}, {report.wall_s:.0f} s)"]
    if report.skipped:
        parts.append(f"skipped: {report.skipped}")
    if report.rows:
        parts.append(table(report))
    parts.extend(f"- {note}" for note in report.notes)
    return "\n".join(parts)


# --------------------------------------------------------------------------- JSON, plot
def write_json(
    path: str | os.PathLike[str],
    machine_info: Mapping[str, Any],
    reports: Sequence[Report],
    argv: Sequence[str],
) -> None:
    data = {
        "machine": dict(machine_info),
        "command": " ".join(["python -m bench", *argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reports": {r.benchmark: r.to_dict() for r in reports},
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False, default=_jsonable) + "\n")
    tmp.replace(p)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-ready")


class PlotUnavailable(RuntimeError):
    pass


def plot(
    path: str | os.PathLike[str], machine_info: Mapping[str, Any], reports: Sequence[Report]
) -> None:
    """Draw every latency row's distribution (kernelsup beside its anchor, log scale) and
    every other row as bars, one panel per benchmark. Raises PlotUnavailable when the
    ``plot`` extra (matplotlib) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install -e '.[plot]'") from None
    panels: list[tuple[str, list[Row], bool]] = []
    for rep in reports:
        lat = [r for r in rep.rows if r.unit == "ms" and (r.kernelsup or r.anchor)]
        other = [r for r in rep.rows if r.unit not in ("ms", "count") and (r.kernelsup or r.anchor)]
        if lat:
            panels.append((rep.benchmark, lat, True))
        if other:
            panels.append((rep.benchmark, other, False))
    if not panels:
        panels.append(("nothing measured", [], True))
    heights = [max(1.6, 0.7 * len(rows) + 1.0) for _, rows, _ in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(12, sum(heights) + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (name, rows, is_latency) in zip(axes[:, 0], panels, strict=True):
        if is_latency:
            _latency_panel(ax, name, rows)
        else:
            _bar_panel(ax, name, rows)
    fig.suptitle(machine_line(machine_info), fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)


_KS_COLOR = "#1f77b4"
_ANCHOR_COLOR = "#d62728"


def _latency_panel(ax: Any, name: str, rows: list[Row]) -> None:
    data, positions, colors, labels, ticks = [], [], [], [], []
    censored: list[tuple[float, str]] = []
    for i, r in enumerate(rows):
        base = i * 3.0
        ticks.append(base + 0.5)
        label = f"{r.name} vs {r.anchor_name}" if r.anchor_name else r.name
        labels.append("\n".join(textwrap.wrap(label, 44)))
        if not r.anchor and r.anchor_note:
            censored.append((base + 1.0, r.anchor_note))
        for offset, values, color in (
            (0.0, r.kernelsup, _KS_COLOR),
            (1.0, r.anchor, _ANCHOR_COLOR),
        ):
            if values:
                data.append(values)
                positions.append(base + offset)
                colors.append(color)
    if data:
        style = {
            "positions": positions,
            "widths": 0.8,
            "patch_artist": True,
            "showfliers": True,
            "whis": (1, 99),
        }
        try:
            parts = ax.boxplot(data, orientation="horizontal", **style)
        except TypeError:  # matplotlib < 3.10
            parts = ax.boxplot(data, vert=False, **style)
        for patch, color in zip(parts["boxes"], colors, strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.45)
        for y, values, color in zip(positions, data, colors, strict=True):
            ax.plot(values, [y] * len(values), "|", color=color, alpha=0.6, markersize=6)
        ax.set_xscale("log")
        for y, note in censored:
            ax.annotate(
                f"anchor: {note}",
                xy=(0.99, y),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="center",
                fontsize=6,
                color=_ANCHOR_COLOR,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            )
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("ms (log scale); blue = kernelsup, red = anchor; whiskers p1..p99", fontsize=7)
    ax.set_title(f"{name}: latency distributions", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)


def _bar_panel(ax: Any, name: str, rows: list[Row]) -> None:
    ticks, labels = [], []
    for i, r in enumerate(rows):
        ticks.append(i)
        labels.append("\n".join(textwrap.wrap(f"{r.name} [{r.unit}]", 44)))
        ks, an = r.ks_stats, r.anchor_stats
        vmax = max([s.p50 for s in (ks, an) if s is not None] + [1e-12])
        for offset, s, color in ((-0.2, ks, _KS_COLOR), (0.2, an, _ANCHOR_COLOR)):
            if s is not None:
                ax.barh(i + offset, s.p50 / vmax, height=0.38, color=color, alpha=0.6)
                ax.text(
                    s.p50 / vmax, i + offset, f" {_num(s.p50, r.unit)}", va="center", fontsize=6
                )
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.35)
    ax.set_xticks([])
    ax.set_title(
        f"{name}: p50, relative within each row (blue = kernelsup, red = anchor)", fontsize=9
    )


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def runtime_dir(tag: str) -> Iterator[Path]:
    """A private (0700), short directory under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"kb{tag}-", dir=RUNTIME_PREFIX))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pool_config(
    name: str = "default",
    *,
    size: int = 1,
    spares: int = 0,
    heartbeat: float = 1.0,
    misses: int = 3,
    **extra: Any,
) -> dict[str, Any]:
    """A pool that restarts at once and forever: the benchmarks kill kernels on purpose
    and measure the restart itself, not the back-off."""
    return {
        "name": name,
        "size": size,
        "spares": spares,
        "restart": {"min_delay": 0.0, "jitter": "none", "max_retries": -1},
        "heartbeat": {"interval": heartbeat, "misses": misses},
        **extra,
    }


def config_dict(*pools: dict[str, Any], runtime_dir: Path | None = None) -> dict[str, Any]:
    sup: dict[str, Any] = {"intensity": 100_000, "period": 1.0}
    if runtime_dir is not None:
        sup["runtime_dir"] = str(runtime_dir)
    return {"supervisor": sup, "pool": list(pools)}


def to_toml(config: Mapping[str, Any]) -> str:
    """The TOML text of a config made by :func:`config_dict` (for ``kernelsup run``):
    top-level tables, ``[[pool]]`` entries and their sub-tables; scalars only."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        raise TypeError(f"cannot write {v!r} as TOML here")

    def table(header: str, data: Mapping[str, Any]) -> list[str]:
        lines = [header]
        lines += [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
        for k, v in data.items():
            if isinstance(v, Mapping):
                name = header.strip("[]")
                lines += ["", *table(f"[{name}.{k}]", v)]
        return lines

    out: list[str] = []
    for key, val in config.items():
        if isinstance(val, list):
            for item in val:
                out += [*table(f"[[{key}]]", item), ""]
        else:
            out += [*table(f"[{key}]", val), ""]
    return "\n".join(out)


def connection_file(runtime_dir: Path, kernel_id: str) -> Path:
    """The connection file kernelsup wrote for ``kernel_id`` in ``runtime_dir`` (its
    current incarnation): how the anchors reach the very same kernel process."""
    found = sorted(runtime_dir.glob(f"kernel-{kernel_id}-*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no connection file for kernel {kernel_id} in {runtime_dir}")
    return found[-1]


async def wait_for_output(
    proc: trio.Process, marker: bytes, timeout: float, exited: Callable[[], str]
) -> None:
    """Read ``proc``'s stdout until ``marker`` appears (its ready line). Raises
    ``RuntimeError(exited())`` (say, the tail of its log) if it exits first, and
    ``trio.TooSlowError`` after ``timeout`` seconds."""
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(timeout):
        while marker not in buf:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(exited())
            buf += chunk


async def stop_tethered(proc: trio.Process, timeout: float) -> None:
    """Stop a process started under ``bench.tether`` and wait for it: closing its stdin
    makes the tether stop ``kernelsup run`` with SIGINT; after ``timeout`` seconds its
    process group is SIGKILLed. Call it shielded."""
    if proc.stdin is not None:
        await proc.stdin.aclose()
    with trio.move_on_after(timeout):
        await proc.wait()
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def ms(seconds: float) -> float:
    return seconds * 1000.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
