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
