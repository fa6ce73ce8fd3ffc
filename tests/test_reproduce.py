"""``biasloss reproduce``: statistics by hand, a tiny real grid on digits, skip and resume, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from biasloss.analysis import reproduce
from biasloss.analysis.reproduce import (
    GridRun,
    GridSettings,
    aggregate,
    format_markdown,
    mean_std,
    paired_difference,
    t_quantile_975,
)
from biasloss.cli import main
from biasloss.train.checkpoint import load_checkpoint

pytest.importorskip("sklearn")

TINY = ["--dataset", "digits", "--models", "skipblocknet_xs", "--epochs", "1", "--limit", "64",
        "--batch-size", "32", "--no-progress", "--device", "cpu"]


def _one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("biasloss: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def test_mean_and_sample_std_by_hand():
    mean, std = mean_std([70.0, 71.0, 73.0])
    assert mean == pytest.approx(214 / 3)
    # deviations -4/3, -1/3, 5/3: squares 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2 -> 7/3
    assert std == pytest.approx(math.sqrt(7 / 3))
    assert mean_std([5.0]) == (5.0, None)
    assert mean_std([]) == (None, None)


def test_paired_difference_t_interval_for_three_seeds():
    bias = {0: 71.0, 1: 72.5, 2: 70.0}
    ce = {0: 70.0, 1: 71.0, 2: 70.0, 3: 99.0}  # seed 3 has no bias run: not paired
    d = paired_difference(bias, ce)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["diffs"] == pytest.approx([1.0, 1.5, 0.0])
    assert d["mean"] == pytest.approx(2.5 / 3)
    # deviations 1/6, 2/3, -5/6: squares 1/36 + 16/36 + 25/36 = 42/36, over 2 -> 7/12
    sd = math.sqrt(7 / 12)
    assert d["std"] == pytest.approx(sd)
    half = 4.302652730 * sd / math.sqrt(3)  # t(0.975, df=2)
    assert d["ci95"] == pytest.approx([2.5 / 3 - half, 2.5 / 3 + half])
    single = paired_difference({0: 2.0}, {0: 1.0})
    assert single["n"] == 1 and single["mean"] == 1.0 and single["ci95"] is None


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.7062047)
    assert t_quantile_975(2) == pytest.approx(4.3026527)
    assert t_quantile_975(30) == pytest.approx(2.0422725)
    # beyond the table: the expansion against exact values
    for df, exact in ((31, 2.0395134464), (40, 2.0210753903), (60, 2.0002978220), (120, 1.9799304050)):
        assert t_quantile_975(df) == pytest.approx(exact, abs=2e-6)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            t_quantile_975(bad)


def test_markdown_has_paper_columns_for_table4(tmp_path):
    settings = GridSettings(command="table4", dataset="cifar100", models=["cifar_shufflenetv2", "cifar_resnet18"],
                         losses=["ce", "focal", "bias"], seeds=[0, 1, 2], recipe="cifar100", epochs=200)
    top1 = {"ce": [69.0, 70.0, 71.0], "focal": [69.5, 70.0, 70.5], "bias": [70.0, 71.5, 71.0]}
    runs = []
    for model in settings.models:
        for loss, values in top1.items():
            for seed, value in enumerate(values):
                runs.append(GridRun(model, loss, seed, tmp_path / f"{model}-{loss}-s{seed}", status="finished",
                                    final_top1=value, best_top1=value + 1))
    results = {"settings": vars(settings), "runs": [r.record(tmp_path) for r in runs], **aggregate(runs, settings)}
    cell = next(c for c in results["cells"] if c["model"] == "cifar_shufflenetv2" and c["loss"] == "ce")
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(70.0) and cell["std"] == pytest.approx(1.0)
    assert cell["paper"] == 69.5 and cell["best_mean"] == pytest.approx(71.0)
    diff = next(d for d in results["differences"] if d["model"] == "cifar_shufflenetv2" and d["loss"] == "bias")
    assert diff["mean"] == pytest.approx(2.5 / 3) and diff["paper"] == pytest.approx(1.5)
    md = format_markdown(results)
    row = next(line for line in md.splitlines() if line.startswith("| `cifar_shufflenetv2`"))
    assert "70.00 ± 1.00 (n=3)" in row and "ShuffleNetV2 0.5x" in row and "| 69.5 |" in row and "+1.5" in row
    resnet = next(line for line in md.splitlines() if line.startswith("| `cifar_resnet18`"))
    assert "74.33" in resnet and "75.51" in resnet  # the authors' README; no focal number there
    assert "Table 4" in md and "README" in md


# ---------------------------------------------------------------------------------------------
# a real grid on digits
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid")
    assert main(["reproduce", "grid", *TINY, "--losses", "ce", "bias", "--seeds", "0", "1",
                 "--out", str(out)]) == 0
    return out


def test_grid_writes_results(grid):
    results = json.loads((grid / "results.json").read_text())
    assert len(results["runs"]) == 4
    for run in results["runs"]:
        assert run["status"] == "finished" and run["epochs_done"] == 1
        metrics = [json.loads(line) for line in (grid / run["dir"] / "metrics.jsonl").read_text().splitlines()]
        assert run["final_top1"] == metrics[-1]["val_top1"]
    assert {(r["loss"], r["seed"]) for r in results["runs"]} == {("ce", 0), ("ce", 1), ("bias", 0), ("bias", 1)}
    assert (grid / "runs" / "skipblocknet_xs-bias-s1" / "last.pt").is_file()
    cells = {c["loss"]: c for c in results["cells"]}
    ce_values = [r["final_top1"] for r in results["runs"] if r["loss"] == "ce"]
    assert cells["ce"]["n"] == 2 and cells["ce"]["mean"] == pytest.approx(sum(ce_values) / 2)
    (diff,) = results["differences"]
    assert diff["loss"] == "bias" and diff["n"] == 2 and len(diff["ci95"]) == 2
    md = (grid / "results.md").read_text()
    assert "| model | CE | bias | bias − CE [95 % CI] |" in md
    assert "4 of 4 runs finished" in md and "no digits numbers" in md


def test_rerun_skips_finished_runs(grid, monkeypatch, capsys):
    from biasloss.train import runner

    def fail(args):
        raise AssertionError(f"trained again: {args.out}")

    monkeypatch.setattr(runner, "run_train", fail)
    before = (grid / "runs" / "skipblocknet_xs-ce-s0" / "last.pt").stat().st_mtime_ns
    old = json.loads((grid / "results.json").read_text())
    capsys.readouterr()
    assert main(["reproduce", "grid", *TINY, "--losses", "ce", "bias", "--seeds", "0", "1",
                 "--out", str(grid)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 4
    assert (grid / "runs" / "skipblocknet_xs-ce-s0" / "last.pt").stat().st_mtime_ns == before
    assert json.loads((grid / "results.json").read_text())["cells"] == old["cells"]


def test_grid_refuses_runs_with_other_settings(grid, capsys):
    code = main(["reproduce", "grid", *TINY, "--losses", "ce", "--seeds", "0", "--limit", "32",
                 "--out", str(grid)])
    _one_line_error(capsys, code, "--limit 64, not 32")
    code = main(["reproduce", "grid", *TINY, "--losses", "ce", "--seeds", "0", "--epochs", "2",
                 "--out", str(grid)])
    _one_line_error(capsys, code, "--epochs 1, not 2")


def test_interrupted_run_is_resumed(tmp_path, monkeypatch):
    from biasloss.train import runner

    run = tmp_path / "runs" / "skipblocknet_xs-ce-s0"
    common = ["--dataset", "digits", "--model", "skipblocknet_xs", "--limit", "32", "--batch-size", "32",
              "--no-progress", "--device", "cpu"]
    # 1 of 2 planned epochs, as a grid interrupted after the first epoch leaves it
    assert main(["train", *common, "--loss", "ce", "--seed", "0", "--epochs", "2", "--stop-after", "1",
                 "--out", str(run)]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    calls = []
    real = runner.run_train

    def spy(args):
        calls.append(args.resume)
        return real(args)

    monkeypatch.setattr(runner, "run_train", spy)
    assert main(["reproduce", "grid", *common[:2], "--models", "skipblocknet_xs", *common[4:], "--losses", "ce",
                 "--seeds", "0", "--epochs", "2", "--out", str(tmp_path)]) == 0
    assert calls == [str(run / "last.pt")]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"][0]["status"] == "finished" and results["runs"][0]["epochs_done"] == 2


def test_records_carry_each_run_and_a_grid_continues_from_them(grid, tmp_path, monkeypatch, capsys):
    import shutil

    from biasloss.train import runner

    record = json.loads((grid / "records" / "skipblocknet_xs-bias-s1.json").read_text())
    metrics = [json.loads(line) for line in (grid / "runs" / "skipblocknet_xs-bias-s1" / "metrics.jsonl")
               .read_text().splitlines()]
    assert record["metrics"] == metrics and record["final_top1"] == metrics[-1]["val_top1"]
    assert record["seed"] == 1 and record["identity"]["loss"] == "bias" and record["identity"]["alpha"] == 0.3
    assert record["command"].startswith("biasloss train --dataset digits --model skipblocknet_xs --loss bias "
                                        "--seed 1 ") and "--resume" not in record["command"]
    assert record["versions"]["torch"] and record["machine"]["logical_cpus"] >= 1
    # published: records and results only, the run directories gone
    published = tmp_path / "published"
    shutil.copytree(grid, published, ignore=shutil.ignore_patterns("runs"))
    monkeypatch.setattr(runner, "run_train", lambda args: pytest.fail(f"trained again: {args.out}"))
    capsys.readouterr()
    assert main(["reproduce", "grid", *TINY, "--losses", "ce", "bias", "--seeds", "0", "1",
                 "--out", str(published)]) == 0
    assert capsys.readouterr().out.count("skipped") == 4
    assert (published / "results.json").read_text() == (grid / "results.json").read_text()
    # a record of other settings is refused like a run directory of other settings
    code = main(["reproduce", "grid", *TINY, "--losses", "bias", "--seeds", "0", "--alpha", "0.1",
                 "--out", str(published)])
    _one_line_error(capsys, code, "skipblocknet_xs-bias-s0.json", "--alpha 0.3, not 0.1")


def test_variance_of_every_ce_and_bias_run_with_paired_differences(grid, tmp_path, monkeypatch, capsys):
    import shutil

    from biasloss.analysis.variance import checkpoint_variance
    from biasloss.train import runner

    copy = tmp_path / "grid"
    shutil.copytree(grid, copy)
    monkeypatch.setattr(runner, "run_train", lambda args: pytest.fail(f"trained again: {args.out}"))
    argv = ["reproduce", "grid", *TINY, "--losses", "ce", "bias", "--seeds", "0", "1", "--variance"]
    assert main([*argv, "--out", str(copy)]) == 0
    assert capsys.readouterr().out.count("feature variance measured") == 4
    measured = {}
    for loss in ("ce", "bias"):
        for seed in (0, 1):
            record = json.loads((copy / "records" / f"skipblocknet_xs-{loss}-s{seed}.json").read_text())
            layers = record["variance"]["layers"]
            assert [layer["label"] for layer in layers][:2] == ["5th conv", "20th conv"]
            assert layers[2]["label"].startswith("last conv")
            measured[loss, seed] = layers
    # the record holds what `biasloss variance --checkpoint` measures
    direct = checkpoint_variance(copy / "runs" / "skipblocknet_xs-bias-s1" / "last.pt", device="cpu")
    assert [s.as_dict() for s in direct.layers] == [
        {k: layer[k] for k in ("avg", "max", "min")} for layer in measured["bias", 1]]
    rows = json.loads((copy / "results.json").read_text())["variance"]
    assert len(rows) == 3 * 3  # layers x (avg, max, min)
    last_max = next(r for r in rows if r["layer"].startswith("last conv") and r["stat"] == "max")
    diffs = [measured["bias", s][2]["max"] - measured["ce", s][2]["max"] for s in (0, 1)]
    assert last_max["difference"]["diffs"] == pytest.approx(diffs)
    assert last_max["ratio"]["geomean"] == pytest.approx(math.exp(sum(math.log(measured["bias", s][2]["max"] / measured["ce", s][2]["max"]) for s in (0, 1)) / 2))
    assert last_max["cells"]["ce"]["mean"] == pytest.approx((measured["ce", 0][2]["max"] + measured["ce", 1][2]["max"]) / 2)
    md = (copy / "results.md").read_text()
    assert "Per-sample feature variance (Table 5's question)" in md and md.count("| `skipblocknet_xs` | ") == 1 + 9
    # published without run directories: the table stays, nothing is measured again
    published = tmp_path / "published"
    shutil.copytree(copy, published, ignore=shutil.ignore_patterns("runs"))
    assert main([*argv, "--out", str(published)]) == 0
    assert "measured" not in capsys.readouterr().out
    assert json.loads((published / "results.json").read_text())["variance"] == rows


def test_ablation_against_a_finished_baseline_grid(grid, tmp_path, monkeypatch, capsys):
    from biasloss.analysis import reproduce
    from biasloss.train import runner

    variants = {"no-clamp": {"clamp": "none"}, "alpha1.0-beta0": {"alpha": 1.0, "beta": 0.0}}
    monkeypatch.setattr(reproduce.grid, "ABLATIONS", variants)  # where run_ablation reads it
    trained = []
    real = runner.run_train

    def spy(args):
        trained.append((args.out, args.alpha, args.beta, args.clamp))
        return real(args)

    monkeypatch.setattr(runner, "run_train", spy)
    out = tmp_path / "ablation"
    argv = ["reproduce", "ablation", *TINY, "--seeds", "0", "1", "--out", str(out)]
    assert main([*argv, "--baseline", str(grid)]) == 0
    # the baseline grid is read, never trained into; each variant trains its Bias Loss runs
    assert sorted(f"{Path(o).parent.parent.name}/{Path(o).name} {a} {b} {c}" for o, a, b, c in trained) == [
        "alpha1.0-beta0/skipblocknet_xs-bias-s0 1.0 0.0 None", "alpha1.0-beta0/skipblocknet_xs-bias-s1 1.0 0.0 None",
        "no-clamp/skipblocknet_xs-bias-s0 None None none", "no-clamp/skipblocknet_xs-bias-s1 None None none"]
    results = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == ["ce (cross-entropy)", "default Bias Loss", "no-clamp", "alpha1.0-beta0"]

    def top1(where, loss, seed):
        return json.loads((where / "records" / f"skipblocknet_xs-{loss}-s{seed}.json").read_text())["final_top1"]

    row = rows["alpha1.0-beta0"]
    assert row["vs_default"]["diffs"] == pytest.approx(
        [top1(out / "alpha1.0-beta0", "bias", s) - top1(grid, "bias", s) for s in (0, 1)])
    assert row["vs_ce"]["diffs"] == pytest.approx(
        [top1(out / "alpha1.0-beta0", "bias", s) - top1(grid, "ce", s) for s in (0, 1)])
    assert rows["ce (cross-entropy)"]["mean"] == pytest.approx((top1(grid, "ce", 0) + top1(grid, "ce", 1)) / 2)
    md = (out / "results.md").read_text()
    assert "| alpha1.0-beta0 | alpha 1.0, beta 0.0 |" in md and "| no-clamp | clamp none |" in md
    # a baseline without the runs is refused (not trained into); loss options are the ablation's own
    capsys.readouterr()
    code = main([*argv[:-1], str(tmp_path / "other"), "--seeds", "0", "1", "2", "--baseline", str(grid)])
    _one_line_error(capsys, code, "lacks finished runs", "skipblocknet_xs-ce-s2")
    code = main([*argv, "--alpha", "0.5"])
    _one_line_error(capsys, code, "leave out --alpha")


def test_interrupted_grid_gives_the_same_results_file(tmp_path):
    common = ["--dataset", "digits", "--models", "skipblocknet_xs", "--epochs", "2", "--limit", "64",
              "--batch-size", "32", "--no-progress", "--device", "cpu", "--losses", "ce", "bias", "--seeds", "0"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(["reproduce", "grid", *common, "--out", str(straight)]) == 0
    # the interruption: the first run stopped after epoch 1 of 2 (as Ctrl-C at that point leaves it)
    assert main(["train", "--dataset", "digits", "--model", "skipblocknet_xs", "--loss", "ce", "--seed", "0",
                 "--epochs", "2", "--limit", "64", "--batch-size", "32", "--no-progress", "--device", "cpu",
                 "--stop-after", "1", "--out", str(interrupted / "runs" / "skipblocknet_xs-ce-s0")]) == 0
    assert main(["reproduce", "grid", *common, "--out", str(interrupted)]) == 0
    assert (interrupted / "results.json").read_text() == (straight / "results.json").read_text()
    assert (interrupted / "results.md").read_text() == (straight / "results.md").read_text()


def test_loss_options_reach_the_trainer_and_the_identity(tmp_path, capsys):
    from biasloss.train import runner

    seen = []
    real = runner.run_train

    def spy(args):
        seen.append((args.alpha, args.beta, args.scaling, args.clamp, args.label_smoothing))
        return real(args)

    import unittest.mock

    with unittest.mock.patch.object(runner, "run_train", spy):
        assert main(["reproduce", "grid", *TINY, "--losses", "bias", "--seeds", "0", "--alpha", "1.0",
                     "--beta", "0", "--scaling", "running_min", "--no-clamp", "--label-smoothing", "0.1",
                     "--out", str(tmp_path)]) == 0
    assert seen == [(1.0, 0.0, "running_min", "none", 0.1)]
    record = json.loads((tmp_path / "records" / "skipblocknet_xs-bias-s0.json").read_text())
    assert "--alpha 1.0 --beta 0.0 --scaling running_min --no-clamp --label-smoothing 0.1" in record["command"]
    md = (tmp_path / "results.md").read_text()
    assert "alpha 1.0, beta 0.0, scaling running_min, clamp none, label smoothing 0.1" in md
    ckpt = load_checkpoint(tmp_path / "runs" / "skipblocknet_xs-bias-s0" / "last.pt")
    assert ckpt["args"]["clamp"] == "none"
    capsys.readouterr()
    code = main(["reproduce", "grid", *TINY, "--losses", "bias", "--seeds", "0", "--alpha", "1.0", "--beta", "0",
                 "--scaling", "running_min", "--label-smoothing", "0.1", "--out", str(tmp_path)])
    _one_line_error(capsys, code, "--clamp none, not [0.5, 1.5]")


def test_a_run_repeats_to_the_digit_in_another_process(tmp_path):
    # the same command and seed in two fresh processes: every metric but the timings is identical
    import subprocess
    import sys

    def train(out: Path) -> list[dict]:
        subprocess.run([sys.executable, "-m", "biasloss", "train", "--dataset", "digits", "--model", "skipblocknet_xs",
                        "--loss", "bias", "--epochs", "2", "--limit", "128", "--batch-size", "32", "--seed", "3",
                        "--no-progress", "--device", "cpu", "--out", str(out)], check=True, timeout=600,
                       capture_output=True)
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if k not in ("time_s", "train_s", "train_img_s")} for line in lines]

    first, second = train(tmp_path / "a"), train(tmp_path / "b")
    assert len(first) == 2 and first == second


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def test_table4_defaults_and_short_names_in_a_dry_run(tmp_path, capsys, monkeypatch):
    from biasloss.train import runner

    monkeypatch.setattr(runner, "run_train", lambda args: pytest.fail("a dry run trains nothing"))
    assert main(["reproduce", "table4", "--models", "shufflenetv2", "squeezenet", "--num-seeds", "2",
                 "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "12 runs (2 models x 3 losses x 2 seeds) on cifar100, 200 epochs" in out
    assert "cifar_shufflenetv2-focal-s1: to train" in out and "cifar_squeezenet-bias-s0" in out
    assert not (tmp_path / "results.md").exists()
    assert main(["reproduce", "table3", "--dry-run", "--seeds", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 runs (2 models x 2 losses x 1 seeds) on imagenet" in out
    assert "mobilenetv3_large_100-ce-s0" in out and "skipblocknet_m-bias-s0" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--models", "no_such_net"], "unknown model 'no_such_net'"),
        (["--seeds", "0", "--num-seeds", "2"], "not both"),
        (["--seeds", "0", "0"], "twice"),
        (["--seeds", "-1"], "--seeds must be >= 0"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--dataset", "mnist-nope"], "mnist-nope"),
        (["--recipe", "nope"], "unknown recipe"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    code = main(["reproduce", "grid", "--dataset", "digits", "--dry-run", "--out", str(tmp_path), *argv])
    _one_line_error(capsys, code, needle)


def test_corrupt_checkpoint_in_a_run_dir_is_one_line(tmp_path, capsys):
    run = tmp_path / "runs" / "skipblocknet_xs-ce-s0"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"not a checkpoint")
    code = main(["reproduce", "grid", *TINY, "--losses", "ce", "--seeds", "0", "--out", str(tmp_path)])
    _one_line_error(capsys, code, "last.pt")


def test_module_exports():
    assert set(reproduce.GRIDS) == {"table4", "table3", "grid", "ablation"}
    assert "running_min" in reproduce.ABLATIONS and reproduce.ABLATIONS["no-clamp"] == {"clamp": "none"}
    assert reproduce.GRIDS["table4"].models == ("cifar_shufflenetv2", "cifar_mobilenetv2_075", "cifar_nasnet_a",
                                               "cifar_squeezenet", "cifar_densenet_k12")


def test_ce_x_c_and_rank_arms_against_a_finished_baseline(grid, tmp_path, monkeypatch):
    from biasloss.analysis import reproduce
    from biasloss.train import runner

    trained = []
    real = runner.run_train

    def spy(config):
        trained.append((Path(config.out).name, config.loss, config.scaling, config.loss_scale))
        return real(config)

    monkeypatch.setattr(runner, "run_train", spy)
    out = tmp_path / "arms"
    argv = ["reproduce", "ablation", *TINY, "--seeds", "0", "1", "--out", str(out), "--baseline", str(grid),
            "--variants", "ce-x-c", "rank"]
    assert main(argv) == 0
    # c of each seed: the mean over the epochs of the paired default Bias Loss run's mean weight
    c = {s: reproduce.mean_weight(grid / "records" / f"skipblocknet_xs-bias-s{s}.json") for s in (0, 1)}
    assert all(0.7 <= v <= 1.05 for v in c.values())
    assert trained == [("skipblocknet_xs-ce-s0", "ce", None, c[0]), ("skipblocknet_xs-ce-s1", "ce", None, c[1]),
                       ("skipblocknet_xs-bias-s0", "bias", "rank", None),
                       ("skipblocknet_xs-bias-s1", "bias", "rank", None)]
    record = json.loads((out / "ce-x-c" / "records" / "skipblocknet_xs-ce-s1.json").read_text())
    assert record["identity"]["loss_scale"] == c[1] and f"--loss-scale {c[1]}" in record["command"]
    assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert list(rows) == ["ce (cross-entropy)", "default Bias Loss", "ce-x-c", "rank"]
    assert rows["ce-x-c"]["weights"] is None and rows["rank"]["weights"]["z_mean"] > 0.7
    assert len(rows["rank"]["class_top1"]) == 10 and rows["rank"]["class_vs_ce"]["0"]["n"] == 2
    # run again: everything is finished, nothing is trained, the same c is found
    trained.clear()
    assert main(argv) == 0 and trained == []
    assert "ce-x-c" in (out / "results.md").read_text() and "The weights z" in (out / "results.md").read_text()
