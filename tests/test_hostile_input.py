"""Careless and hostile input (issue 13): every bad value is refused before any work, with exit
code 2, one line naming the flag, no traceback, and nothing written."""

from __future__ import annotations

import pytest

from biasloss.cli import main

pytest.importorskip("sklearn")

FAST = ["--dataset", "digits", "--model", "skipblocknet_xs", "--batch-size", "32", "--limit", "64",
        "--no-progress", "--device", "cpu", "--epochs", "1"]

# (subcommand argv, the flag the one-line error must name)
BAD_NUMBERS = [
    (["train", *FAST, "--weight-decay", "-1"], "--weight-decay"),
    (["train", *FAST, "--weight-decay", "nan"], "--weight-decay"),
    (["train", *FAST, "--lr", "inf"], "--lr"),
    (["train", *FAST, "--lr", "nan"], "--lr"),
    (["train", *FAST, "--lr", "0"], "--lr"),
    (["detect", "train", "--data-dir", "x", "--lr", "nan"], "--lr"),
    (["detect", "train", "--data-dir", "x", "--weight-decay", "-1"], "--weight-decay"),
    (["detect", "train", "--data-dir", "x", "--limit", "0"], "--limit"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_NUMBERS, ids=[" ".join(a[-3:]) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_before_any_work(argv, flag, tmp_path, capsys):
    code = main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("biasloss: error: ") and flag in err, err
    assert not (tmp_path / "run").exists()


BAD_DEVICES = [["train", *FAST], ["eval", "--checkpoint", "x.pt"], ["variance", "--model", "skipblocknet_xs"],
               ["profile", "skipblocknet_xs"], ["detect", "train", "--data-dir", "x"]]


@pytest.mark.parametrize("argv", BAD_DEVICES, ids=[a[0] if a[0] != "detect" else "detect" for a in BAD_DEVICES])
@pytest.mark.parametrize("device", ["foo", "cuda:99"])
def test_a_device_that_is_not_there_is_named(argv, device, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "run")] if argv[0] in ("train", "detect") else []
    code = main([*argv, *extra, "--device", device])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "--device" in err and device in err, err
    assert not (tmp_path / "run").exists()
