"""A run directory holds one run: ``biasloss train`` never mixes two runs in one ``--out``, never
lets two trainings write one directory at once, and never writes a log line ahead of its
checkpoint (issue 13: lost or mixed work)."""

from __future__ import annotations

import fcntl
import os
import stat
import json
from pathlib import Path

import pytest

from biasloss.cli import main
from biasloss.train import loop
from biasloss.train.checkpoint import load_checkpoint, save_checkpoint

pytest.importorskip("sklearn")

FAST = ["--dataset", "digits", "--model", "skipblocknet_xs", "--batch-size", "32", "--limit", "64",
        "--no-progress", "--device", "cpu"]


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != ".lock"}


def _error(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("biasloss: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    """A 3-epoch run stopped after its second epoch."""
    out = tmp_path_factory.mktemp("a") / "run"
    # stopped after 2 of 3 epochs: a resume continues it (a resume cannot change --epochs)
    assert main(["train", *FAST, "--epochs", "3", "--stop-after", "2", "--out", str(out)]) == 0
    return out


def test_a_new_run_into_a_run_directory_is_refused(run_a, capsys):
    before = _files(run_a)
    code = main(["train", *FAST, "--epochs", "2", "--seed", "1", "--out", str(run_a)])
    _error(capsys, code, "already holds a run", "--resume", "new --out")
    assert _files(run_a) == before


def test_a_resume_writes_only_into_its_own_or_a_new_directory(run_a, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *FAST, "--epochs", "1", "--out", str(other)]) == 0
    before_a, before_other = _files(run_a), _files(other)
    # into a directory holding a different run: refused, nothing touched
    code = main(["train", *FAST, "--epochs", "3", "--resume", str(run_a / "last.pt"), "--out", str(other)])
    _error(capsys, code, "already holds a run", "another directory")
    assert _files(other) == before_other and _files(run_a) == before_a
    # into a new directory: a branch of run A, its log starting with A's epochs
    branch = tmp_path / "branch"
    assert main(["train", *FAST, "--epochs", "3", "--resume", str(run_a / "last.pt"), "--out", str(branch)]) == 0
    lines = (branch / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == (run_a / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert _files(run_a) == before_a


def test_a_second_training_on_a_locked_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # what a running training holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = main(["train", *FAST, "--epochs", "1", "--out", str(out)])
    _error(capsys, code, "in use by another training")
    assert not (out / "metrics.jsonl").exists() and not (out / "last.pt").exists()
    # released: the directory is usable again
    assert main(["train", *FAST, "--epochs", "1", "--out", str(out)]) == 0


def test_temporary_files_of_a_killed_write_are_removed(run_a, tmp_path):
    import shutil

    run = tmp_path / "killed"
    shutil.copytree(run_a, run)
    for name in (".last.pt.abc123.tmp", ".best.pt.x.tmp", ".metrics.jsonl.q.tmp"):
        (run / name).write_bytes(b"partial")
    (run / "notes.tmp").write_text("mine")
    assert main(["train", *FAST, "--epochs", "3", "--resume", str(run / "last.pt"), "--out", str(run)]) == 0
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "last.pt", "metrics.jsonl", "notes.tmp"]


def test_a_figure_is_written_all_or_nothing(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biasloss.analysis.plots import save

    fig = plt.figure()
    path = save(fig, tmp_path / "f.png")
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fig, "savefig", full_disk)
    with pytest.raises(OSError):
        save(fig, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]
    plt.close(fig)


def test_a_checkpoint_without_arguments_is_not_resumed(run_a, tmp_path, capsys):
    state = load_checkpoint(run_a / "last.pt")
    state["args"] = {}
    save_checkpoint(state, tmp_path / "empty.pt")
    code = main(["train", "--resume", str(tmp_path / "empty.pt"), "--out", str(tmp_path / "x"), "--no-progress"])
    _error(capsys, code, "empty.pt", "no training arguments")
    assert not (tmp_path / "x").exists()


def test_the_log_never_runs_ahead_of_the_checkpoint(tmp_path, monkeypatch):
    real = loop.save_checkpoint
    calls = []

    def failing(state, path):
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            raise OSError(28, "No space left on device")
        return real(state, path)

    monkeypatch.setattr(loop, "save_checkpoint", failing)
    out = tmp_path / "full"
    with pytest.raises(OSError):
        main(["train", *FAST, "--epochs", "2", "--out", str(out)])
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_without_out_a_second_run_gets_a_new_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["train", *FAST, "--epochs", "1"]) == 0
    first, second = tmp_path / "runs" / "digits-skipblocknet_xs-bias-s0", tmp_path / "runs" / "digits-skipblocknet_xs-bias-s0-2"
    assert load_checkpoint(first / "last.pt")["epoch"] == 1 and load_checkpoint(second / "last.pt")["epoch"] == 1
    assert len((first / "metrics.jsonl").read_text().splitlines()) == 1


def test_files_written_atomically_get_the_usual_mode(tmp_path):
    # what open() gives a new file: 0666 less the umask (mkstemp alone would make it 0600)
    from biasloss._io import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    finally:
        os.umask(old)
