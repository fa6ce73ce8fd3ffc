"""``biasloss plot``: every kind writes a PNG and an SVG of the expected size, with the expected titles,
labels and legends; bad input ends with one error line."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from biasloss.analysis.plots import load_metrics, load_results, plot_tradeoff  # noqa: E402
from biasloss.cli import main  # noqa: E402
from biasloss.errors import InputError  # noqa: E402

# What each figure must show. Pixel sizes: plots.figure's size per panel (inches) times the panels,
# at plots.save's 150 dpi, e.g. weights: two 6.4 x 5.2 in panels -> 12.8 x 5.2 in -> 1920 x 780 px.
# Texts: titles, axis labels and legend entries (matplotlib's SVG keeps each as a comment). The
# loss legend's weights are z(v) = exp(0.3 v) - 0.3 worked out by hand: 0.70, 0.86, 1.05 for v = 0, 0.5, 1.
FIGURES = {
    "weights": ((1920, 780), {"(a) β varies: the floor 1 − β down-weights low variance",
                              "(b) α varies: the rise for high variance", "α = 0.3, β = 0.3  (paper)",
                              "α = 1.5, β = 0.3", "scaled variance v"}),
    "weights_pairs": ((1050, 780), {"α = 0.3, β = 0.3  (paper)", "α = 1, β = 0.3", "scaled variance v"}),
    "loss": ((1920, 660), {"(a) correct predictions", "(b) incorrect predictions", "L_ce = −log p",
                           "L_bias, v = 0  (z = 0.70)", "L_bias, v = 0.5  (z = 0.86)", "L_bias, v = 1  (z = 1.05)"}),
    "tradeoff": ((2250, 840), {"MACs (millions)", "parameters (millions)", "top-1 accuracy (%)", "tiny (ours)",
                               "skipblocknet_m (imagenet) (ours)", "SkipblockNet-XS", "MobileNetV3 Large 1.0x"}),
    "curves": ((1920, 660), {"validation top-1 (%)", "training loss / validation loss", "ce", "bias",
                             "training", "validation", "Learning curves"}),
}
C0, C1 = (31, 119, 180), (255, 127, 14)  # matplotlib's tab10 blue and orange: the first two runs


def _svg_texts(path: Path) -> set[str]:
    data = path.read_text(encoding="utf-8")
    assert data.lstrip().startswith(("<?xml", "<svg")) and data.rstrip().endswith("</svg>")
    return set(re.findall(r"<!-- (.*?) -->", data))


def _png(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.convert("RGB")


def _check_figure(path: Path, size: tuple[int, int], texts: set[str]) -> None:
    if path.suffix == ".svg":
        missing = texts - _svg_texts(path)
        assert not missing, (path.name, missing)
    else:
        im = _png(path)
        assert im.size == size
        ink = sum(n for n, rgb in im.getcolors(maxcolors=1 << 20) if rgb != (255, 255, 255)) / (size[0] * size[1])
        assert 0.02 < ink < 0.6, (path.name, ink)  # drawn on, not a blank or solid canvas


def _run_dir(root: Path, name: str, epochs: int = 6, offset: float = 0.0) -> Path:
    run = root / name
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({
                "epoch": e, "train_loss": 2.0 * math.exp(-e / 3), "train_top1": 50 + 5 * e,
                "val_loss": 2.1 * math.exp(-e / 3), "val_top1": 45 + 5 * e + offset, "val_top5": 90.0,
                "lr": 0.1 * 0.5 ** (e // 3), "time_s": 1.5,
            }) + "\n")
    return run


@pytest.fixture
def runs(tmp_path):
    return _run_dir(tmp_path, "ce"), _run_dir(tmp_path, "bias", offset=1.0)


@pytest.fixture
def results(tmp_path):
    profile = tmp_path / "profile.json"  # as biasloss profile --json prints for two models
    profile.write_text(json.dumps([{"model": "skipblocknet_m", "params": 5532352, "macs": 236622048},
                                   {"model": "mobilenetv3_large_100", "params": 5483032, "macs": 216589760}]))
    evals = tmp_path / "eval.jsonl"  # as biasloss eval --json prints, one line per run
    evals.write_text(json.dumps({"model": "skipblocknet_m", "top1": 76.0, "dataset": "imagenet"}) + "\n"
                     + json.dumps({"name": "tiny", "top1": 70.5, "macs": "120M", "params": "3.1M"}) + "\n")
    return profile, evals


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_every_kind_writes_png_and_svg(tmp_path, runs, results, suffix, capsys):
    commands = {
        "weights": ["plot", "weights"],
        "weights_pairs": ["plot", "weights", "--alpha", "0.3", "1.0", "--beta", "0.3"],
        "loss": ["plot", "loss"],
        "tradeoff": ["plot", "tradeoff", "--results", *map(str, results)],
        "curves": ["plot", "curves", str(runs[0]), str(runs[1] / "metrics.jsonl"), "--metric", "val_top1", "loss"],
    }
    for name, argv in commands.items():
        out = tmp_path / "figs" / f"{name}{suffix}"  # the folder does not exist yet
        assert main([*argv, "--out", str(out)]) == 0, name
        _check_figure(out, *FIGURES[name])
        assert f"wrote {out}" in capsys.readouterr().out
    if suffix == ".png":  # each run's curve in its own colour
        colours = {rgb for _, rgb in _png(tmp_path / "figs" / "curves.png").getcolors(maxcolors=1 << 20)}
        assert {C0, C1} <= colours
    else:  # one panel only: not the two of the default; profiled-only models are not drawn
        one_panel = _svg_texts(tmp_path / "figs" / "weights_pairs.svg")
        assert "(a) β varies: the floor 1 − β down-weights low variance" not in one_panel
        assert not any("mobilenetv3_large_100" in t for t in _svg_texts(tmp_path / "figs" / "tradeoff.svg"))


def test_results_merge_by_name_and_parse_units(results):
    merged = {r["label"]: r for r in load_results(results)}
    assert merged["skipblocknet_m"]["top1"] == 76.0 and merged["skipblocknet_m"]["macs"] == 236622048
    assert merged["tiny"]["macs"] == 120e6 and merged["tiny"]["params"] == 3.1e6
    assert merged["mobilenetv3_large_100"]["top1"] is None  # profiled only: not drawn


def test_tradeoff_single_axis_without_paper(tmp_path, results):
    # one 7.5 x 5.6 in panel at 150 dpi
    _check_figure(plot_tradeoff(tmp_path / "t.png", results=results, x="params", paper=False, title="Food-101"),
                  (1125, 840), set())
    texts = _svg_texts(plot_tradeoff(tmp_path / "t.svg", results=results, x="params", paper=False, title="Food-101"))
    assert {"Food-101", "parameters (millions)", "tiny (ours)", "skipblocknet_m (imagenet) (ours)"} <= texts
    assert "MACs (millions)" not in texts and "SkipblockNet-XS" not in texts  # no MACs panel, no paper points


def test_metrics_keep_the_last_line_of_a_repeated_epoch(tmp_path):
    run = _run_dir(tmp_path, "resumed", epochs=3)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"epoch": 2, "val_top1": 99.0}) + "\n")
    history = load_metrics(run)
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[1]["val_top1"] == 99.0


def _fails(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("biasloss: error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_exit_2_with_one_line(tmp_path, runs, capsys):
    png = str(tmp_path / "x.png")
    assert "suffix" in _fails(["plot", "weights", "--out", str(tmp_path / "x.txt")], capsys)
    assert "nope" in _fails(["plot", "curves", str(tmp_path / "nope"), "--out", png], capsys)
    assert "metrics.jsonl" in _fails(["plot", "curves", str(tmp_path), "--out", png], capsys)
    assert "val_top9" in _fails(["plot", "curves", str(runs[0]), "--metric", "val_top9", "--out", png], capsys)
    assert "not found" in _fails(["plot", "tradeoff", "--results", str(tmp_path / "no.json"), "--out", png], capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "a", "top1": 50}\n{oops\n')
    assert "line 2" in _fails(["plot", "tradeoff", "--results", str(bad), "--out", png], capsys)
    bad.write_text('{"name": "a", "top1": 150}\n')
    assert "top1" in _fails(["plot", "tradeoff", "--results", str(bad), "--out", png], capsys)
    _fails(["plot", "weights", "--alpha", "1", "2", "--beta", "1", "2", "3", "--out", png], capsys)
    _fails(["plot", "tradeoff", "--no-paper", "--out", png], capsys)
    _fails(["plot"], capsys)
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    err = _fails(["plot", "weights", "--out", str(tmp_path / "w.png")], capsys)
    assert "pip install -e '.[plots]'" in err


def test_curves_draw_the_bias_loss_weights(tmp_path):
    run = tmp_path / "bias"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for e in (1, 2, 3):
            f.write(json.dumps({"epoch": e, "val_top1": 80.0 + e, "z_p10": 0.70, "z_p50": 0.72 + 0.01 * e,
                                "z_p90": 0.9, "z_mean": 0.75, "z_near_min": 0.5 - 0.1 * e}) + "\n")
    out = tmp_path / "w.svg"
    assert main(["plot", "curves", str(run), "--metric", "weights", "z_near_min", "--out", str(out)]) == 0
    assert {"Bias Loss weight z", "median", "10th / 90th percentile", "fraction of weights at the batch's lowest",
            "bias"} <= _svg_texts(out)


def test_tradeoff_help_shows_a_single_percent_sign(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "tradeoff", "--help"])
    out = capsys.readouterr().out
    assert "top1 (%)" in out and "%%" not in out


def test_tradeoff_refuses_what_it_cannot_place(tmp_path):
    # issue: reproduce's results.json read as a record without a name; an eval --json alone dropped
    # without a word; a digits model's top-1 drawn with the 224 px, 1000-class model's MACs
    grid = tmp_path / "results.json"
    grid.write_text(json.dumps({"settings": {}, "metric": "final_top1", "rows": []}))
    with pytest.raises(InputError, match="results of 'biasloss reproduce'"):
        load_results([grid])
    evaluated = tmp_path / "eval.json"
    evaluated.write_text(json.dumps({"top1": 97.2, "dataset": "digits", "model": "skipblocknet_xs"}))
    with pytest.raises(InputError, match="no macs or params"):
        plot_tradeoff(tmp_path / "a.png", results=[evaluated], paper=False)
    profiled = tmp_path / "profile.json"
    profiled.write_text(json.dumps({"model": "skipblocknet_xs", "params": 2328680, "macs": 76213456,
                                    "setup": {"input_shape": [1, 3, 224, 224], "num_classes": 1000}}))
    with pytest.raises(InputError, match="at 32 px, 10 classes, 1 channel cannot merge .* at 224 px, 1000 classes"):
        load_results([profiled, evaluated])
    small = tmp_path / "profile-small.json"
    small.write_text(json.dumps({"model": "skipblocknet_xs", "params": 2300000, "macs": 5000000,
                                 "setup": {"input_shape": [1, 1, 32, 32], "num_classes": 10}}))
    with pytest.raises(InputError, match="paper's points are ImageNet's"):
        plot_tradeoff(tmp_path / "b.png", results=[small, evaluated])
    assert plot_tradeoff(tmp_path / "c.png", results=[small, evaluated], paper=False).exists()


def test_tradeoff_labels_of_close_points_do_not_overlap(tmp_path, monkeypatch):
    # eight models within 0.007 points of top-1 and 0.07M MACs, one far away: too close for any
    # spot around their markers, so labels are nudged apart (with a line back to their point)
    import itertools

    from matplotlib.text import Text

    from biasloss.analysis import plots

    figures = []
    save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path, *a, **k: (figures.append(fig), save(fig, path, *a, **k))[1])
    close = [{"label": f"model {i} (seed {i})", "name": f"m{i}", "top1": 70 + 0.001 * i, "macs": 100e6 + 1e4 * i,
              "params": None, "dataset": None} for i in range(8)]
    far = {"label": "far", "name": "far", "top1": 80.0, "macs": 400e6, "params": None, "dataset": None}
    plot_tradeoff(tmp_path / "close.png", results=[*close, far], x="macs", paper=False)
    (fig,) = figures
    fig.canvas.draw()  # as saved
    renderer = fig.canvas.get_renderer()
    boxes = {}
    for label in fig.axes[0].texts:
        label.update_positions(renderer)
        boxes[label.get_text()] = Text.get_window_extent(label, renderer)  # the text, not its leader line
    assert sorted(boxes) == sorted(r["label"] for r in [*close, far])
    overlapping = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2) if box_a.overlaps(box_b)]
    assert not overlapping
