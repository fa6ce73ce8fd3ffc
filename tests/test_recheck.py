"""``biasloss reproduce-check RECORD``: a record of a tiny real grid repeats ("same"); a tampered
record names the epoch and key that differ; what is not a record is a one-line error (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasloss._provenance import git_state
from biasloss.analysis.recheck import check_record, compare_metrics
from biasloss.cli import main

pytest.importorskip("sklearn")

GRID = ["--dataset", "digits", "--models", "skipblocknet_xs", "--losses", "bias", "--seeds", "0", "--epochs", "2",
        "--limit", "64", "--batch-size", "32", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid")
    assert main(["reproduce", "grid", *GRID, "--out", str(out)]) == 0
    return out / "records" / "skipblocknet_xs-bias-s0.json"


def _tampered(record: Path, tmp_path: Path, epoch: int, **changes) -> Path:
    data = json.loads(record.read_text())
    data["metrics"][epoch - 1].update(changes)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def test_a_record_repeats_at_head(record, tmp_path):
    data = json.loads(record.read_text())
    # the record names the code that made it (the tree's state then: compare the form only)
    assert set(data["git"]) == {"commit", "dirty"} and (data["git"]["commit"] is None) == (git_state()["commit"] is None)
    result = check_record(record, workdir=tmp_path)
    assert result.same and result.difference is None, result.summary()
    assert (result.epochs, result.record_epochs) == (2, 2)
    assert result.record_git == data["git"] and result.threads == data["machine"]["threads"]
    assert result.summary().endswith("\nsame")
    assert (tmp_path / "skipblocknet_xs-bias-s0" / "last.pt").is_file()  # --out kept the run


def test_a_tampered_metric_is_the_first_difference(record, tmp_path, capsys):
    data = json.loads(record.read_text())
    val_top1, val_top5 = data["metrics"][0]["val_top1"], data["metrics"][0]["val_top5"]
    # a timing differs anyway and is not compared; the first difference is val_top1 of epoch 1
    path = _tampered(record, tmp_path, 1, val_top1=val_top1 + 1.5625, val_top5=-1, time_s=1e6)
    assert main(["reproduce-check", str(path), "--epochs", "1"]) == 1
    out = capsys.readouterr().out
    assert f"differs: epoch 1: val_top1 {val_top1 + 1.5625} in the record, {val_top1} at HEAD\n" in out, out
    assert f"  also in epoch 1: val_top5 -1 in the record, {val_top5} at HEAD\n" in out, out
    assert "epochs 1-1 of 2" in out, out
    commit = data["git"]["commit"]
    assert (f"a record of commit {commit[:12]}" if commit else "a record that names no commit") in out, out


def test_epochs_checks_only_the_first(record, tmp_path, capsys):
    path = _tampered(record, tmp_path, 2, val_loss=123.0)  # epoch 2 is not checked
    assert main(["reproduce-check", str(path), "--epochs", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("same")
    data = json.loads(path.read_text())
    data["metrics"][0]["val_loss"] = 456.0
    path.write_text(json.dumps(data))
    result = check_record(path)  # all epochs
    assert [d.split(": ")[1].split()[0] for d in result.differences] == ["val_loss", "val_loss"]
    assert result.summary().endswith("  and 1 more difference in later epochs")


def test_a_record_without_git_or_with_keys_head_lacks(record, tmp_path):
    data = json.loads(record.read_text())
    del data["git"]
    data["metrics"][0]["retired_metric"] = 1.0  # a key HEAD no longer logs
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    result = check_record(path, epochs=1)
    assert result.record_git is None and "names no commit" in result.summary()
    assert result.difference == "epoch 1: retired_metric 1.0 in the record, missing at HEAD"


def _error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("biasloss: error: ") and needle in err, err


def test_what_is_not_a_record_is_a_user_error(record, tmp_path, capsys):
    _error(capsys, ["reproduce-check", str(tmp_path / "missing.json")], "no record")
    (tmp_path / "x.json").write_text('{"final_top1": 1}')
    _error(capsys, ["reproduce-check", str(tmp_path / "x.json")], "not a run record")
    (tmp_path / "y.json").write_text("not json")
    _error(capsys, ["reproduce-check", str(tmp_path / "y.json")], "not a run record")
    data = json.loads(record.read_text())
    (tmp_path / "z.json").write_text(json.dumps({**data, "command": "biasloss eval --checkpoint x.pt"}))
    _error(capsys, ["reproduce-check", str(tmp_path / "z.json")], "not 'biasloss train")
    (tmp_path / "w.json").write_text(json.dumps({**data, "command": data["command"] + " --no-such-flag"}))
    _error(capsys, ["reproduce-check", str(tmp_path / "w.json")], "does not parse at HEAD")
    _error(capsys, ["reproduce-check", str(record), "--epochs", "0"], "--epochs")


def test_compare_metrics():
    recorded = [{"epoch": 1, "loss": 1.0, "time_s": 3.0}, {"epoch": 2, "loss": 0.5}]
    assert compare_metrics(recorded, [{"epoch": 1, "loss": 1.0, "time_s": 9.0, "new": 1}, {"epoch": 2, "loss": 0.5}]) == []
    assert compare_metrics(recorded, [{"epoch": 1, "loss": 1.0}]) == ["epoch 2: in the record, missing at HEAD"]
    assert compare_metrics(recorded, [{"epoch": 1, "loss": 1.1}, {"epoch": 2, "loss": 0.6}], labels=("a", "b")) == [
        "epoch 1: loss 1.0 a, 1.1 b", "epoch 2: loss 0.5 a, 0.6 b"]
    assert compare_metrics(recorded, [{"epoch": 1, "loss": 1.1}, {"epoch": 2, "loss": 0.5}],
                           same=lambda key, a, b: abs(a - b) < 0.2) == []
