"""The one figure style: every plot of a run, a study summary and a report is drawn and saved through here.

Figures are plain `matplotlib.figure.Figure` objects (no pyplot state to leak or close) at print
resolution (`DPI`) with constrained layout, so titles and tick labels are laid out inside the
canvas instead of clipped. Names are wrapped onto lines, never cut, and count axes get integer ticks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from mlflow.tracking import MlflowClient

DPI = 200
SAVE_RC = {"svg.fonttype": "none"}  # SVG keeps its text as text: searchable, and editable in a paper's figure
BREAK_AFTER = re.compile(r"(?<=[\s/_:·-])")  # where a long name may go onto the next line


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, squeeze: bool = True, **kwargs):
    """(figure, axes) at `DPI` with constrained layout; `kwargs` go to `Figure.subplots`."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def wrap(name: str, width: int = 22) -> str:
    """`name` on lines of at most `width` characters, broken after spaces, `/`, `-`, `_`, `:` or `·` where it
    can; every character is kept (a name is never truncated), only spaces at a break become the newline."""
    lines = [""]
    for token in BREAK_AFTER.split(name):
        while token:
            room = width - len(lines[-1])
            if len(token) <= room:
                lines[-1], token = lines[-1] + token, ""
            elif lines[-1].strip():
                lines.append("")
            else:
                lines[-1], token = token[:width], token[width:]
    return "\n".join(line.strip() for line in lines if line.strip())


def integer_ticks(axis: Axis) -> None:
    """Whole-number ticks only (epochs, counts)."""
    axis.set_major_locator(MaxNLocator(integer=True))


def value_ticks(axis: Axis, values: list[int]) -> None:
    """Ticks at exactly `values`, labelled as plain integers: a log axis says 2, not 2×10⁰."""
    axis.set_major_locator(FixedLocator(values))
    axis.set_major_formatter(lambda value, _: f"{value:g}")
    axis.set_minor_locator(NullLocator())


def fraction_axis(ax, fractions: list[float]) -> None:
    """A log x axis of training-data fractions, ticked at exactly those fractions as percentages."""
    ax.set_xscale("log")
    value_ticks(ax.xaxis, fractions)
    ax.xaxis.set_major_formatter(lambda value, _: f"{100 * value:g}%")
    ax.set_xlabel("training data")


def figure_path(stem: str, fmt: str) -> str:
    """`plots/roc` -> `plots/roc.svg`: the artifact path of a figure in the chosen format."""
    return f"{stem}.{fmt}"


def save(fig: Figure, path) -> None:
    """Write `fig` to `path`, its extension picking PNG (at `DPI`) or SVG."""
    with rc_context(SAVE_RC):
        fig.savefig(path)


def log_figures(figures: dict[str, Figure], client: MlflowClient | None = None, run_id: str = "") -> None:
    """Log each figure at its artifact path (the extension picks PNG or SVG) to `run_id` through `client`,
    or to the active run."""
    import mlflow  # lazy: drawing a figure does not need the tracking client

    with rc_context(SAVE_RC):
        for path, fig in figures.items():
            if client is None:
                mlflow.log_figure(fig, path)
            else:
                client.log_figure(run_id, fig, path)
