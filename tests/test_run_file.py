"""The typed description of a run: ``biasloss train``'s flags, ``reproduce``'s, the run file
(``--config`` / ``--print-config``) and the defaults all come from :class:`TrainConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from biasloss.cli import main, parse_args
from biasloss.losses import LOSSES, BiasLoss, bias_loss
from biasloss.train.settings import DEFAULTS, TrainConfig, add_options, format_config, read_config, to_argv

#: ``biasloss train``'s flags before they were generated from TrainConfig (a command that worked
#: keeps working): every one is still there.
FLAGS_BEFORE = {
    "--dataset", "--data-dir", "--download", "--model", "--loss", "--recipe", "--epochs", "--batch-size",
    "--eval-batch-size", "--lr", "--weight-decay", "--label-smoothing", "--alpha", "--beta", "--scaling", "--clamp",
    "--no-clamp", "--gamma", "--loss-scale", "--no-loss-sync", "--seed", "--out", "--init", "--resume",
    "--stop-after", "--limit", "--device", "--workers", "--no-progress", "--amp", "--no-channels-last", "--compile",
    "--compile-mode"}


class _Recorder:
    """Stands for an argparse parser: what each flag is added with."""

    def __init__(self) -> None:
        self.flags: dict[str, argparse.Namespace] = {}

    def add_argument_group(self, title: str) -> _Recorder:
        return self

    def add_argument(self, *flags: str, **kwargs) -> None:
        self.flags.update({flag: argparse.Namespace(**{"choices": None, **kwargs}) for flag in flags})


def _flags() -> dict[str, argparse.Namespace]:
    parser = _Recorder()
    add_options(parser)
    return parser.flags


def test_the_flags_are_those_of_before_and_each_has_help():
    flags = _flags()
    assert set(flags) == FLAGS_BEFORE
    assert all(action.help for action in flags.values())


def test_a_loss_option_takes_its_help_choices_and_default_from_the_loss():
    flags = _flags()
    options = {key for spec in LOSSES.values() for key in spec.options}
    assert options <= {f.name for f in dataclasses.fields(TrainConfig)}  # every loss option is a field
    for spec in LOSSES.values():
        for key, default in spec.options.items():
            assert flags["--" + key].help.startswith(spec.help[key])
            assert DEFAULTS[key] == default
    assert flags["--scaling"].choices == ("batch", "running_min", "rank")
    assert DEFAULTS == {"dataset": "fashion-mnist", "download": False, "loss": "bias", "alpha": 0.3, "beta": 0.3,
                        "scaling": "batch", "clamp": [0.5, 1.5], "gamma": 2.0, "loss_scale": 1.0,
                        "no_loss_sync": False, "seed": 0, "amp": "auto", "channels_last": True, "compile": False}


def test_to_argv_gives_back_the_config_it_was_made_of():
    config = TrainConfig(dataset="digits", model="skipblocknet_xs", loss="bias", epochs=3, lr=0.05, clamp="none",
                         scaling="rank", download=True, progress=False, channels_last=False, compile=True,
                         limit=64, out="runs/x", loss_scale=2.0)
    argv = to_argv(config)
    assert argv[:5] == ["--dataset", "digits", "--download", "--model", "skipblocknet_xs"]  # the fields' order
    assert "--no-clamp" in argv and "--no-progress" in argv and "--no-channels-last" in argv
    args = vars(parse_args(["train", *argv]))
    assert TrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(TrainConfig)}) == config
    assert to_argv(TrainConfig(clamp=[0.4, 1.2])) == ["--clamp", "0.4", "1.2"]
    assert to_argv(TrainConfig()) == []


def test_print_config_resolves_and_config_reads_it_back(tmp_path, capsys):
    assert main(["train", "--print-config", "--dataset", "digits", "--lr", "0.05", "--no-clamp"]) == 0
    text = capsys.readouterr().out
    assert "epochs: 5\n" in text and 'recipe: "digits"\n' in text and 'clamp: "none"\n' in text  # resolved
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == text  # a fixed point
    # a flag beside the file wins; keys may be written as the flags are
    path.write_text("batch-size: 16\nseed: 4\ndataset: digits\nweight_decay: 1e-4\n")
    assert main(["train", "--config", str(path), "--seed", "7", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7\n" in out and "batch_size: 16\n" in out and "weight_decay: 0.0001\n" in out
    assert read_config(path) == {"batch_size": 16, "seed": 4, "dataset": "digits", "weight_decay": 1e-4}


def test_format_config_writes_every_option():
    text = format_config(TrainConfig(lr=0.1, clamp=[0.4, 1.2]))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert [line.split(":")[0] for line in lines] == [f.name for f in dataclasses.fields(TrainConfig)]
    assert "clamp: [0.4, 1.2]" in lines and "lr: 0.1" in lines and "seed: null" in lines


@pytest.mark.parametrize("text, message", [
    ("lr_: 1\n", "unknown option 'lr_'; did you mean 'lr'?"),
    ("epochs: ten\n", "epochs: expected an integer, got 'ten'"),
    ("epochs: true\n", "epochs: expected an integer, got True"),
    ("lr: .nan\n", "lr: expected a number"),
    ("scaling: foo\n", "scaling: expected one of batch, running_min, rank, got 'foo'"),
    ("loss: nope\n", "loss: expected one of ce, focal, bias"),
    ("clamp: [1]\n", "clamp: expected [low, high] or 'none', got [1]"),
    ("compile: 1\n", "compile: expected true or false, got 1"),
    ("- 1\n", "expected a mapping of options to values, got list"),
    ("a: [\n", "is not YAML"),
    (b"\xff\xfe", "cannot read it"),
])
def test_a_bad_run_file_is_one_line_naming_the_file_and_the_option(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["train", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err, err


def test_a_missing_run_file_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_functional_bias_loss_and_the_module_share_the_sync_default():
    assert inspect.signature(bias_loss).parameters["sync"].default == "auto"
    assert inspect.signature(BiasLoss).parameters["sync"].default == "auto"
