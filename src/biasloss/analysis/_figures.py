"""The matplotlib plumbing of the figure commands (:mod:`.plots`, :mod:`.samples`, :mod:`.variance`):
a figure on the Agg canvas (never pyplot), the ``--out`` check and a reproducible, all-or-nothing save.

matplotlib is an optional dependency (``pip install -e '.[plots]'`` in the checkout), imported only when a
figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

from biasloss._io import atomic_write, writable_file
from biasloss.errors import InputError, MissingDependencyError

__all__ = ["FORMATS", "check_out", "figure", "save", "style"]

#: Output formats, from the ``--out`` suffix.
FORMATS = (".png", ".svg", ".pdf")


def figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (6.4, 4.4)):
    """A figure on the Agg canvas and its axes (never pyplot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("plots need matplotlib: pip install -e '.[plots]' in the biasloss checkout "
                                     "(or pip install matplotlib)") from None
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).flat)


def check_out(out: str | Path, flag: str = "--out") -> Path:
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"{flag} must end in {', '.join(FORMATS)} (the format follows the suffix); got {str(out)!r}")
    return writable_file(path, flag)


def save(fig, path: Path, dpi: int = 150) -> Path:
    import matplotlib

    # Reproducible SVG/PDF: fixed ids, no creation date. Written all or nothing (a full disk
    # leaves the previous figure, not an empty one).
    fmt = path.suffix.lower().lstrip(".")
    with matplotlib.rc_context({"svg.hashsalt": "biasloss"}):
        metadata = {"Date": None} if fmt == "svg" else ({"CreationDate": None} if fmt == "pdf" else None)
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, metadata=metadata))


def style(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.tick_params(labelsize=9.5)
