"""The ``biasloss train`` / ``eval`` commands end to end on scikit-learn's digits (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_imagenet

from biasloss.cli import main
from biasloss.train.checkpoint import load_checkpoint, save_checkpoint

pytest.importorskip("sklearn")

FAST = ["--dataset", "digits", "--model", "skipblocknet_xs", "--batch-size", "32", "--limit", "128",
        "--no-progress", "--device", "cpu"]


def _train(tmp_path: Path, *extra: str, out: str = "run") -> int:
    return main(["train", *FAST, "--out", str(tmp_path / out), *extra])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _out_of(percent: float, n: int) -> bool:
    """``percent`` (rounded to 4 decimals in metrics.jsonl) is k/n for a whole number k."""
    k = percent * n / 100
    return abs(k - round(k)) < n * 1e-6


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("loss", ["ce", "focal", "bias"])
def test_train_writes_metrics_and_checkpoints(tmp_path, loss):
    assert _train(tmp_path, "--loss", loss, "--epochs", "1") == 0
    run = tmp_path / "run"
    (line,) = _metrics(run)
    for key in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "time_s"):
        assert key in line
    # --limit 128: top-1 and top-5 are counts out of the 128 validation images, top-1 within top-5
    assert line["epoch"] == 1 and line["val_top1"] <= line["val_top5"]
    assert _out_of(line["val_top1"], 128) and _out_of(line["val_top5"], 128), line
    assert math.isfinite(line["train_loss"]) and math.isfinite(line["val_loss"])
    ckpt = load_checkpoint(run / "last.pt")
    for key in ("model", "optimizer", "scheduler", "epoch", "loss", "args"):
        assert key in ckpt
    assert ckpt["args"]["loss"] == loss and ckpt["epoch"] == 1
    assert (run / "best.pt").is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_eval_reports_the_top1_train_logged(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "2") == 0
    run = tmp_path / "run"
    logged = _metrics(run)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1"] == logged[-1]["val_top1"] and result["top5"] == logged[-1]["val_top5"]
    best = max(logged, key=lambda m: m["val_top1"])
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"] == best["val_top1"]


def test_eval_limit_takes_the_first_n_test_images(tmp_path, capsys):
    """Issue 26 (10): eval --limit N evaluates the first N test images; by default the run's own --limit."""
    assert _train(tmp_path, "--epochs", "1") == 0
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", "--no-progress", "--device", "cpu",
                 "--limit", "40"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 40
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 128
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--limit", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biasloss: error: --limit") and "\n" not in err


def test_resume_continues_exactly(tmp_path):
    # one-cycle schedule planned for 2 epochs: stop after the first, resume, compare with straight
    assert _train(tmp_path, "--epochs", "2", out="straight") == 0
    assert _train(tmp_path, "--epochs", "2", "--stop-after", "1", out="split") == 0
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    assert main(["train", "--resume", str(tmp_path / "split" / "last.pt"), "--out", str(tmp_path / "split"),
                 "--no-progress", "--device", "cpu"]) == 0
    _same_weights(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
    assert [m["epoch"] for m in _metrics(tmp_path / "split")] == [1, 2]
    assert _metrics(tmp_path / "split")[1]["val_top1"] == _metrics(tmp_path / "straight")[1]["val_top1"]


def test_resume_on_a_multistep_recipe(tmp_path):
    common = ("--recipe", "cifar100-authors", "--loss", "bias", "--scaling", "running_min")
    assert _train(tmp_path, *common, "--epochs", "2", out="straight") == 0
    assert _train(tmp_path, *common, "--epochs", "2", "--stop-after", "1", out="split") == 0
    assert main(["train", "--resume", str(tmp_path / "split" / "last.pt"), "--epochs", "2",
                 "--out", str(tmp_path / "split"), "--no-progress", "--device", "cpu"]) == 0
    _same_weights(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["loss"]["running_min"]
    torch.testing.assert_close(load_checkpoint(tmp_path / "split" / "last.pt")["loss"]["running_min"], straight)


def test_a_resume_keeps_the_epochs_and_a_finished_run_is_left_alone(tmp_path, capsys):
    """Issue 26 (6): one rule, as reproduce's: a resume cannot change --epochs (its learning-rate
    schedule is planned for them); resuming a finished run says so and touches nothing."""
    assert _train(tmp_path, "--epochs", "1") == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    resume = ["train", "--resume", str(run / "last.pt"), "--no-progress", "--device", "cpu"]
    assert main([*resume, "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biasloss: error: cannot resume") and "--epochs 1, not 3" in err and "\n" not in err
    for extra in ([], ["--epochs", "1"]):
        assert main([*resume, *extra]) == 0
        captured = capsys.readouterr()
        assert captured.out.strip() == "already finished: 1 of 1 epochs; nothing to do" and not captured.err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--epochs included, cannot change" in " ".join(capsys.readouterr().out.split())


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "biasloss", "train", *FAST, "--limit", "256", "--batch-size", "8",
           "--epochs", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until training has started, then ask it to stop
    import time

    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists() and proc.poll() is None:
        if out.exists():
            time.sleep(1.0)
            break
        time.sleep(0.2)
    proc.send_signal(15)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert "Traceback" not in err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] * 1000 + ckpt["step"] > 0
    assert main(["train", "--resume", str(out / "last.pt"), "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_on_the_cpu_and_eval_agrees(tmp_path, capsys, amp):
    # the CUDA path is the same code with device "cuda": autocast(device.type), GradScaler(device.type)
    assert _train(tmp_path, "--amp", amp, "--epochs", "1", "--limit", "32", "--batch-size", "16") == 0  # fp16 is slow on CPUs
    run = tmp_path / "run"
    (line,) = _metrics(run)
    assert math.isfinite(line["train_loss"]) and math.isfinite(line["val_loss"])
    ckpt = load_checkpoint(run / "last.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    scaler = ckpt["scaler"]
    assert (scaler is not None) == (amp == "fp16")
    if scaler is not None:
        assert scaler["scale"] > 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1"] == line["val_top1"] and result["top5"] == line["val_top5"]


def test_fp16_resume_restores_the_grad_scaler(tmp_path):
    common = ("--amp", "fp16", "--epochs", "2", "--limit", "16", "--batch-size", "8")  # fp16 is slow on CPUs
    assert _train(tmp_path, *common, out="straight") == 0
    assert _train(tmp_path, *common, "--stop-after", "1", out="split") == 0
    assert main(["train", "--resume", str(tmp_path / "split" / "last.pt"), "--out", str(tmp_path / "split"),
                 "--no-progress", "--device", "cpu"]) == 0
    _same_weights(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
    straight, split = (load_checkpoint(tmp_path / d / "last.pt")["scaler"] for d in ("straight", "split"))
    assert straight == split


def test_compile_traces_the_training_step(tmp_path, monkeypatch):
    """``--compile`` wraps the model in torch.compile. Inductor's C++ build of the whole step takes
    minutes on a 2-core CPU, so the test compiles with the ``aot_eager`` backend: the same Dynamo
    capture and AOTAutograd forward/backward graphs, no code generation. The weights after a short
    run match eager training to float32 reassociation: the captured backward sums in another order
    (measured after these two steps on an Intel Xeon's oneDNN kernels: up to 6e-5, 2.5e-5 in
    `conv_stem`, which the two steps move by 2.3e-2)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    common = ("--epochs", "1", "--limit", "64", "--loss", "bias")
    assert _train(tmp_path, *common, "--compile", out="compiled") == 0
    assert _train(tmp_path, *common, out="eager") == 0
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("compiled", "eager"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=2e-4, msg=key)
    torch._dynamo.reset()


def test_ema_recipe_evaluates_and_resumes_the_averaged_weights(tmp_path, capsys):
    """The ImageNet recipe keeps an EMA of the weights and validates it: ``eval`` must use the
    same EMA weights, and a resume must continue the EMA exactly."""
    from biasloss.train.saved_run import load_run

    data = tmp_path / "imagenet"
    write_imagenet(data, n_train=4, n_val=2)
    common = ["--dataset", "imagenet", "--data-dir", str(data), "--recipe", "imagenet", "--model", "skipblocknet_xs",
              "--batch-size", "4", "--workers", "1", "--epochs", "2", "--no-progress", "--device", "cpu"]
    assert main(["train", *common, "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--stop-after", "1", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split" / "last.pt"), "--no-progress", "--device", "cpu"]) == 0
    straight, split = (load_checkpoint(tmp_path / d / "last.pt") for d in ("straight", "split"))
    assert straight["eval_weights"] == "ema"
    for part in ("model", "ema"):
        for key in straight[part]:
            torch.testing.assert_close(straight[part][key], split[part][key], rtol=0, atol=0, msg=f"{part} {key}")

    run = load_run(tmp_path / "straight" / "last.pt")
    assert run.spec.num_classes == 3  # the folder's classes, saved with the run
    model = run.model()
    assert run.weights == "ema"
    ema = {k[len("module."):]: v for k, v in straight["ema"].items() if k.startswith("module.")}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in loaded)
    assert any(not torch.equal(straight["model"][k], ema[k]) for k in loaded if ema[k].is_floating_point())

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "straight" / "last.pt"), "--workers", "1", "--json",
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = _metrics(tmp_path / "straight")[-1]
    assert result["weights"] == "ema"
    assert (result["top1"], result["top5"]) == (logged["val_top1"], logged["val_top5"])


class _NaNAfter(torch.nn.Module):
    """Cross-entropy that turns NaN after a few calls."""

    def __init__(self, good_calls: int) -> None:
        super().__init__()
        self.calls, self.good_calls = 0, good_calls

    def forward(self, logits, target, features=None):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss if self.calls <= self.good_calls else loss * float("nan")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from biasloss.losses import LOSSES, LossSpec

    assert _train(tmp_path, "--epochs", "2", "--stop-after", "1", "--loss", "ce") == 0
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    # a loss of the registry that turns NaN on its third batch, under the run's own name
    monkeypatch.setitem(LOSSES, "ce", LossSpec(lambda **kwargs: _NaNAfter(good_calls=2)))
    code = main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2",
                 "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "loss became nan" in err and len(err.strip().splitlines()) == 1
    after = load_checkpoint(tmp_path / "run" / "last.pt")
    assert after["epoch"] == good["epoch"]
    for key, value in good["model"].items():
        torch.testing.assert_close(after["model"][key], value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "no_such_model"], "no_such_model"),
        (["train", "--dataset", "mnist3d"], "unknown dataset"),
        (["train", "--recipe", "nope"], "unknown recipe"),
        (["train", "--epochs", "0"], "must be positive"),
        (["train", "--batch-size", "-3"], "must be positive"),
        (["train", "--dataset", "cifar100", "--data-dir", "/nonexistent"], "cifar"),
        (["eval", "--checkpoint", "/nonexistent/last.pt"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys):
    code = main(argv + ["--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("biasloss: error:") and message in err.lower()


def test_corrupt_and_incompatible_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    save_checkpoint({"weights": 1}, tmp_path / "other.pt")
    assert main(["train", "--resume", str(tmp_path / "other.pt")]) == 2
    assert "not a biasloss training checkpoint" in capsys.readouterr().err
    assert _train(tmp_path, "--epochs", "1") == 0
    capsys.readouterr()
    code = main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--model", "skipblocknet_s"])
    assert code == 2 and "cannot resume" in capsys.readouterr().err
    code = main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--lr", "0.5"])
    assert code == 2 and "--lr" in capsys.readouterr().err


def test_python_dash_m_and_console_script(tmp_path):
    out = subprocess.run([sys.executable, "-m", "biasloss", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout
    exe = shutil.which("biasloss", path=os.path.dirname(sys.executable))
    if exe:
        out = subprocess.run([exe, "eval", "--checkpoint", str(tmp_path / "x.pt")], capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_torchrun_two_cpu_processes(tmp_path, capsys, torchrun):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "biasloss", "train", *FAST,
         "--epochs", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = _metrics(out)
    assert line["epoch"] == 1
    # validation sharded over the two ranks and summed gives what one process gets on all 128
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--json", "--no-progress", "--device", "cpu"]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (single["top1"], single["top5"]) == (line["val_top1"], line["val_top5"])
    ckpt = load_checkpoint(out / "last.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])


# ---------------------------------------------------------------------------------------------
# the typed config and the registries behind the command
# ---------------------------------------------------------------------------------------------


def test_train_flags_are_the_train_config_fields():
    from biasloss.cli import parse_args
    from biasloss.train.runner import TrainConfig

    args = vars(parse_args(["train"]))
    not_options = {"command", "func", "config", "print_config"}  # the run file's flags
    assert set(args) - not_options == {f.name for f in dataclasses.fields(TrainConfig)}
    # unset flags are the config's "not given"
    assert {k: v for k, v in args.items() if k not in not_options} == dataclasses.asdict(TrainConfig())


def test_run_train_takes_a_train_config_and_leaves_it_as_given(tmp_path):
    import argparse

    from biasloss.train.runner import TrainConfig, run_train

    with pytest.raises(TypeError, match="TrainConfig"):
        run_train(argparse.Namespace(resume=None))
    config = TrainConfig(dataset="digits", model="skipblocknet_xs", epochs=1, batch_size=32, limit=32,
                         progress=False, device="cpu", out=str(tmp_path / "run"))
    before = dataclasses.replace(config)
    run_train(config)
    assert config == before  # resolved on a copy: alpha, seed, recipe ... are still None here
    args = load_checkpoint(tmp_path / "run" / "last.pt")["args"]
    assert (args["recipe"], args["loss"], args["alpha"], args["clamp"]) == ("digits", "bias", 0.3, [0.5, 1.5])


def test_trained_with_takes_the_recipe_and_the_defaults():
    from biasloss.train.runner import resume_conflict, trained_with

    # an older checkpoint: batch size left to the recipe, no gamma or limit recorded, a tuple clamp
    ckpt = {"args": {"dataset": "digits", "model": "skipblocknet_xs", "loss": "focal", "batch_size": None,
                     "clamp": (0.5, 1.5)},
            "recipe": {"name": "digits", "batch_size": 64, "epochs": 5, "gamma": 0.1}}
    have = trained_with(ckpt)
    assert (have["batch_size"], have["epochs"], have["clamp"], have["limit"]) == (64, 5, [0.5, 1.5], None)
    assert have["gamma"] == 2.0  # focal's default, not the recipe's learning-rate gamma
    assert resume_conflict(have, {"batch_size": 64, "clamp": [0.5, 1.5]}) is None
    assert resume_conflict(have, {"batch_size": 64, "limit": 32}) == "--limit None, not 32"


def test_a_loss_added_to_the_registry_reaches_the_command_and_the_trainer(monkeypatch):
    from biasloss.cli import parse_args
    from biasloss.losses import LOSSES, FocalLoss, LossSpec
    from biasloss.train.recipes import get_recipe
    from biasloss.train.settings import TrainConfig, build_loss

    monkeypatch.setitem(LOSSES, "focal3", LossSpec(FocalLoss, {"gamma": 3.0}))
    args = parse_args(["train", "--loss", "focal3", "--gamma", "1.5"])
    assert args.loss == "focal3"
    criterion = build_loss(TrainConfig(loss="focal3", gamma=1.5), get_recipe("digits").label_smoothing)
    assert isinstance(criterion, FocalLoss) and criterion.gamma == 1.5


def test_each_dataset_names_its_default_recipe():
    from biasloss.data import DATASETS
    from biasloss.train.recipes import RECIPES, default_recipe

    assert {name: default_recipe(name).name for name in DATASETS} == {
        "fashion-mnist": "fashion-mnist", "digits": "digits", "cifar10": "cifar100", "cifar100": "cifar100",
        "imagenet": "imagenet", "food101": "food101"}
    assert all(spec.recipe in RECIPES for spec in DATASETS.values())


def test_bias_runs_log_their_weights_and_every_run_its_class_top1(tmp_path):
    assert _train(tmp_path, "--loss", "bias", "--scaling", "rank", "--epochs", "1", out="bias") == 0
    assert _train(tmp_path, "--loss", "ce", "--epochs", "1", out="ce") == 0
    (bias,), (ce,) = _metrics(tmp_path / "bias"), _metrics(tmp_path / "ce")
    # rank scaling spreads the weights over [z(0), z(1)] = [0.7, 1.05] by construction
    assert bias["z_p01"] == pytest.approx(0.7, abs=0.01) and bias["z_p99"] == pytest.approx(1.05, abs=0.01)
    assert 0.8 < bias["z_mean"] < 0.95 and bias["z_at_low"] == bias["z_at_high"] == 0.0
    assert not any(key.startswith("z_") for key in ce)  # cross-entropy has no weights
    for line in (bias, ce):
        classes = line["val_class_top1"]
        assert len(classes) == 10 and all(0 <= c <= 100 or math.isnan(c) for c in classes)


def test_loss_scale_multiplies_the_training_loss_and_is_part_of_the_identity(tmp_path, capsys):
    assert _train(tmp_path, "--loss", "ce", "--epochs", "1", "--stop-after", "1", out="one") == 0
    assert _train(tmp_path, "--loss", "ce", "--epochs", "1", "--loss-scale", "2", out="two") == 0
    one, two = _metrics(tmp_path / "one")[0], _metrics(tmp_path / "two")[0]
    assert one["train_loss"] != two["train_loss"]
    assert load_checkpoint(tmp_path / "two" / "last.pt")["args"]["loss_scale"] == 2.0
    # scaling the loss by 1 changes nothing, bit for bit
    assert _train(tmp_path, "--loss", "ce", "--epochs", "1", "--loss-scale", "1", out="unit") == 0
    _same_weights(tmp_path / "one" / "last.pt", tmp_path / "unit" / "last.pt")
    capsys.readouterr()
    code = _train(tmp_path, "--loss", "ce", "--epochs", "2", "--loss-scale", "3", "--resume",
                  str(tmp_path / "two" / "last.pt"), out="two")
    assert code == 2 and "--loss-scale 2.0, not 3.0" in capsys.readouterr().err
    assert _train(tmp_path, "--loss-scale", "0", out="zero") == 2


def test_train_ends_with_a_summary_and_stop_after_with_the_resume_hint(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "2", "--stop-after", "1", out="split") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"stopped after epoch 1 of 2 (--stop-after): continue with --resume "
                    f"{tmp_path / 'split' / 'last.pt'}")
    assert _train(tmp_path, "--resume", str(tmp_path / "split" / "last.pt"), out="split") == 0
    best = load_checkpoint(tmp_path / "split" / "best.pt")["best_top1"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"done: 2 epochs; best val_top1 {best:.2f} in {tmp_path / 'split' / 'best.pt'}"), last


def test_eval_on_another_dataset_says_what_the_model_was_trained_on(tmp_path, capsys, monkeypatch):
    from biasloss.train import runner

    assert _train(tmp_path, "--epochs", "1") == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trained_on"] == "digits"
    # the line eval prints when --dataset is another than the checkpoint's (a full Fashion-MNIST pass is slow)
    result = {"top1": 13.4, "top5": 50.0, "samples": 10000, "dataset": "fashion-mnist", "trained_on": "digits",
              "model": "skipblocknet_xs", "epoch": 1, "weights": "model"}
    monkeypatch.setattr(runner, "run_eval", lambda args: result)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--dataset", "fashion-mnist"]) == 0
    assert "skipblocknet_xs on fashion-mnist (10000 test images, model weights, epoch 1, trained on digits)" in (
        capsys.readouterr().out)


def test_val_ce_is_comparable_between_losses(tmp_path):
    # val_loss is each run's own loss; val_ce the plain cross-entropy of the same logits
    for loss in ("ce", "bias"):
        assert _train(tmp_path, "--loss", loss, "--epochs", "1", out=loss) == 0
    ce, bias = (_metrics(tmp_path / loss)[-1] for loss in ("ce", "bias"))
    assert ce["val_ce"] == pytest.approx(ce["val_loss"], abs=2e-6)  # the digits recipe: no label smoothing
    assert bias["val_ce"] != bias["val_loss"] and bias["val_ce"] > 0
