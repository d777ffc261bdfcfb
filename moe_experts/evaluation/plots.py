"""PNG plots of an evaluation report (the dict written as report.json).

Every plot reads only the report, so a report.json on disk can be re-plotted
without rerunning the evaluation. A plot with no data is skipped, never drawn
empty. matplotlib is imported inside ``write_plots`` so importing this module
(and ``moe-experts --help``) stays cheap.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas rather
than ``pyplot``: nothing is registered in pyplot's global figure list (so
memory cannot grow across calls) and the process-wide backend is left alone.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DPI = 110
# Routing latency is per document; spread it over this many generated tokens.
ROUTING_TOKENS = 64
# PNG metadata: drop the "Software" entry (matplotlib version) so the bytes
# depend only on the report; Agg writes no timestamp of its own.
_PNG_METADATA = {"Software": None}


def write_plots(report: dict, folder: Path) -> dict[str, str]:
    """Write the report's plots into ``folder``; return {plot key: file name} for those written.

    Keys: ``bits_per_byte``, ``confusion:<system>`` (one per routed system),
    ``expert_load:<system>`` (one per token-level MoE), ``reliability``, ``tradeoff``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: heavy import

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def save(key: str, fig: Any, file_name: str) -> None:
        FigureCanvasAgg(fig)  # attach the Agg canvas; no pyplot, no global state
        fig.savefig(folder / file_name, dpi=DPI, bbox_inches="tight", format="png", metadata=_PNG_METADATA)
        fig.clear()
        written[key] = file_name

    fig = _bits_per_byte_figure(report)
    if fig is not None:
        save("bits_per_byte", fig, "bits_per_byte.png")
    else:
        log.info("plot bits_per_byte skipped: no bits-per-byte values in the report")

    used_names: set[str] = set()
    for system in _routed_systems(report):
        fig = _confusion_figure(system, report["routing"][system])
        if fig is None:
            continue
        save(f"confusion:{system}", fig, _unique(f"confusion-{_file_safe(system)}.png", used_names))

    for system, load in (report.get("expert_load") or {}).items():
        fig = _expert_load_figure(system, load)
        if fig is not None:
            save(f"expert_load:{system}", fig, _unique(f"expert-load-{_file_safe(system)}.png", used_names))

    fig = _reliability_figure(report)
    if fig is not None:
        save("reliability", fig, "reliability.png")

    fig = _tradeoff_figure(report)
    if fig is not None:
        save("tradeoff", fig, "tradeoff.png")
    return written


# ---------------------------------------------------------------- helpers


def _num(value: Any) -> float | None:
    """A finite float, or None for missing / null / NaN / non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _file_safe(name: str) -> str:
    # ':' and '/' (as in "expert:code") and anything else a file system may dislike.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _unique(file_name: str, used: set[str]) -> str:
    # Two systems may sanitise to the same name ("a:b" and "a/b"); keep both plots.
    stem, suffix = file_name.rsplit(".", 1)
    candidate, i = file_name, 2
    while candidate in used:
        candidate, i = f"{stem}-{i}.{suffix}", i + 1
    used.add(candidate)
    return candidate


def _system_names(report: dict) -> list[str]:
    """Systems in report column order, then any that only appear in the lm section."""
    names = [s["name"] for s in report.get("systems") or [] if isinstance(s, dict) and "name" in s]
    bpb = (report.get("lm") or {}).get("bits_per_byte") or {}
    return names + [n for n in bpb if n not in names]


def _routed_systems(report: dict) -> list[str]:
    routing = report.get("routing") or {}
    return _ordered(report, routing)


def _ordered(report: dict, keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    order = _system_names(report)
    return [n for n in order if n in keys] + [k for k in keys if k not in order]


def _legend_name(report: dict, system: str) -> str:
    if system == report.get("baseline"):
        return f"{system} (baseline)"
    if system == report.get("oracle"):
        return f"{system} (oracle)"
    return system


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    # tab20 comes in dark/light pairs of one hue; take the ten dark ones first so
    # neighbouring systems do not share a hue.
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [colormaps["tab20"](order[i % 20]) for i in range(n)]


# ---------------------------------------------------------------- bits per byte


def _bits_per_byte_figure(report: dict) -> Any:
    from matplotlib.figure import Figure

    bpb = (report.get("lm") or {}).get("bits_per_byte") or {}
    vs = (report.get("lm") or {}).get("vs_baseline") or {}
    groups = list(report.get("domains") or []) + ["macro"]
    systems = [s for s in _system_names(report) if any(_num((bpb.get(s) or {}).get(g)) is not None for g in groups)]
    groups = [g for g in groups if any(_num((bpb.get(s) or {}).get(g)) is not None for s in systems)]
    if not systems or not groups:
        return None

    values = [[_num((bpb.get(s) or {}).get(g)) for g in groups] for s in systems]  # (S, G), None = missing
    present = [v for row in values for v in row if v is not None]
    lo, hi = min(present), max(present)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    # Differences between systems are often ~1%; starting the axis at 0 would hide them.
    bottom = max(0.0, lo - 0.6 * span)
    top = hi + 0.25 * span

    n_s, n_g = len(systems), len(groups)
    width = 0.8 / n_s
    fig = Figure(figsize=(min(16.0, max(6.4, 1.2 + 0.2 * n_s * n_g)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    colours = _colours(n_s)
    marked = False
    for i, system in enumerate(systems):
        xs = [g + (i - (n_s - 1) / 2) * width for g in range(n_g)]
        heights = [v if v is not None else math.nan for v in values[i]]
        # Baseline outlined in black, oracle hatched (white hatch = its edge colour).
        is_baseline, is_oracle = system == report.get("baseline"), system == report.get("oracle")
        bars = ax.bar(
            xs,
            [h - bottom for h in heights],
            width=width,
            bottom=bottom,
            color=colours[i],
            edgecolor="black" if is_baseline else "white" if is_oracle else colours[i],
            linewidth=1.2 if is_baseline else 0.0,
            hatch="///" if is_oracle else None,
            label=_legend_name(report, system),
        )
        # Mark cells whose confidence interval on the ratio to the baseline excludes 1.
        for bar, group, height in zip(bars, groups, heights, strict=True):
            ci = ((vs.get(system) or {}).get(group) or {}).get("ratio_ci")
            mark = _significance_mark(ci)
            if mark is None or math.isnan(height):
                continue
            marked = True
            ax.text(bar.get_x() + bar.get_width() / 2, height, mark, ha="center", va="bottom", fontsize=7)

    ax.set_xticks(range(n_g))
    ax.set_xticklabels(groups)
    ax.set_ylim(bottom, top)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Bits per byte by domain")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if marked and report.get("baseline"):
        ax.set_xlabel(
            f"▲ worse / ▼ better than {report['baseline']}: confidence interval of the ratio excludes 1",
            fontsize=8,
        )
    # Below the axes, outside them: with ~10 systems an inside legend would cover bars.
    fig.legend(loc="outside lower center", ncol=min(n_s, 4), fontsize=8, frameon=False)
    return fig


def _significance_mark(ci: Any) -> str | None:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    lo, hi = _num(ci[0]), _num(ci[1])
    if lo is None or hi is None:
        return None
    if lo > 1.0:
        return "▲"
    if hi < 1.0:
        return "▼"
    return None


# ---------------------------------------------------------------- routing


def _expert_load_figure(system: str, load: dict) -> Any:
    """Domain x expert heatmaps of the share of tokens, one panel per MoE layer."""
    from matplotlib.figure import Figure

    experts, layers = list(load.get("experts") or []), list(load.get("layers") or [])
    if not experts or not layers:
        return None
    domains = list(layers[0].get("share_by_domain") or {})
    if not domains:
        return None
    cols = min(4, len(layers))
    rows_n = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(1.2 + cols * (0.7 * len(experts) + 1.2), 0.8 + rows_n * (0.45 * len(domains) + 1.2)))
    image = None
    for i, row in enumerate(layers):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        grid = [[_num(row["share_by_domain"][d].get(e)) or 0.0 for e in experts] for d in domains]  # (D, E)
        image = ax.imshow(grid, cmap="Purples", vmin=0.0, vmax=1.0, aspect="auto")
        for r, values in enumerate(grid):
            for c, v in enumerate(values):
                ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.5 else "black")
        ax.set_xticks(range(len(experts)))
        ax.set_xticklabels(experts, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(domains)))
        ax.set_yticklabels(domains if i % cols == 0 else [""] * len(domains), fontsize=7)
        ax.set_title(f"layer {row.get('layer', i)}", fontsize=9)
    fig.suptitle(f"{system}: share of each domain's tokens per expert (%)")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, label="share of the domain's top-k slots")
    return fig


def _confusion_figure(system: str, routing: dict) -> Any:
    from matplotlib.figure import Figure

    labels = list(routing.get("labels") or [])
    experts = list(routing.get("experts") or [])
    matrix = routing.get("confusion") or []
    if not labels or not experts or len(matrix) != len(labels) or any(len(r) != len(experts) for r in matrix):
        log.warning("confusion plot for %r skipped: matrix shape does not match labels x experts", system)
        return None
    counts = [[_num(c) or 0.0 for c in row] for row in matrix]  # (L, E)
    norm = [[c / sum(row) if sum(row) > 0 else 0.0 for c in row] for row in counts]  # row-normalised

    fig = Figure(figsize=(max(4.0, 1.6 + 0.75 * len(experts)), max(3.2, 1.4 + 0.6 * len(labels))))
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for r, row in enumerate(counts):
        for c, count in enumerate(row):
            text = f"{count:.0f}" if float(count).is_integer() else f"{count:.3g}"
            ax.text(c, r, text, ha="center", va="center", fontsize=8, color="white" if norm[r][c] > 0.5 else "black")
    ax.set_xticks(range(len(experts)))
    ax.set_xticklabels(experts, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_xlabel("chosen expert")
    ax.set_ylabel("true domain")
    accuracy = _num(routing.get("accuracy"))
    ax.set_title(f"{system}: routing" + (f" (accuracy {accuracy:.3f})" if accuracy is not None else ""))
    fig.colorbar(image, ax=ax, label="share of the true domain's documents")
    return fig


def _reliability_figure(report: dict) -> Any:
    from matplotlib.figure import Figure

    routing = report.get("routing") or {}
    curves = []
    for system in _routed_systems(report):
        points = []
        for b in routing[system].get("reliability") or []:
            conf, acc = _num(b.get("confidence")), _num(b.get("accuracy"))
            if (_num(b.get("count")) or 0) > 0 and conf is not None and acc is not None:
                points.append((conf, acc))
        if points:
            curves.append((system, sorted(points)))
    if not curves:
        return None

    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for (system, points), colour in zip(curves, _colours(len(curves)), strict=True):
        ece = _num(routing[system].get("ece"))
        label = f"{system} (ECE {ece:.3f})" if ece is not None else f"{system} (ECE n/a)"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=label)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean router confidence in bin")
    ax.set_ylabel("routing accuracy in bin")
    ax.set_title("Router reliability")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


# ---------------------------------------------------------------- cost / quality


def _tradeoff_figure(report: dict) -> Any:
    from matplotlib.figure import Figure

    cost = report.get("cost") or {}
    bpb = (report.get("lm") or {}).get("bits_per_byte") or {}
    systems = _ordered(report, cost)
    use_latency = any((_num((cost[s] or {}).get("tokens_per_second")) or 0) > 0 for s in systems)

    points = []  # (system, x, y)
    for system in systems:
        y = _num((bpb.get(system) or {}).get("macro"))
        x = _latency_ms(cost[system] or {}) if use_latency else _num((cost[system] or {}).get("flops_per_token"))
        if y is None or x is None or (not use_latency and x <= 0):
            continue
        points.append((system, x, y))
    if not points:
        return None

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for (system, x, y), colour in zip(points, _colours(len(points)), strict=True):
        ax.scatter([x], [y], color=colour, s=40, zorder=3)
        ax.annotate(_legend_name(report, system), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if use_latency:
        ax.set_xlabel(f"ms per generated token (incl. routing spread over {ROUTING_TOKENS} tokens)")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per token (log scale)")
    ax.set_ylabel("macro bits per byte (lower is better)")
    ax.set_title("Cost / quality trade-off (lower left is better)")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    return fig


def _latency_ms(cost: dict) -> float | None:
    tps = _num(cost.get("tokens_per_second"))
    if tps is None or tps <= 0:
        return None
    routing = _num(cost.get("routing_ms_p50"))
    return 1000.0 / tps + (routing / ROUTING_TOKENS if routing is not None else 0.0)
