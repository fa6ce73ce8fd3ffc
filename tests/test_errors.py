"""Errors that cannot hide bugs (issue 25, point 3): what the user can mend is a
:class:`~biasloss.errors.BiaslossError`, one line and exit status 2 (1 for a non-finite loss,
130 / 143 for a training stopped by Ctrl-C / SIGTERM); anything else is a bug that keeps its
traceback. The library never raises ``SystemExit``."""

from __future__ import annotations

import builtins
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import biasloss
from biasloss import errors
from biasloss.cli import main
from biasloss.errors import (
    BiaslossError,
    CheckpointError,
    DatasetCorruptError,
    DatasetError,
    DatasetNotFoundError,
    InputError,
    InputFileNotFoundError,
    InputTypeError,
    MissingDependencyError,
    NonFiniteLossError,
    OutputError,
    TrainingInterrupted,
)
from biasloss.train import loop

pytest.importorskip("sklearn")

FAST = ["--dataset", "digits", "--model", "skipblocknet_xs", "--batch-size", "32", "--limit", "64",
        "--no-progress", "--device", "cpu", "--epochs", "1"]


# ---------------------------------------------------------------------------------------------
# The hierarchy
# ---------------------------------------------------------------------------------------------

DUAL_BASES = {
    InputError: (ValueError,),
    InputTypeError: (InputError, ValueError, TypeError),
    InputFileNotFoundError: (InputError, ValueError, FileNotFoundError, OSError),
    CheckpointError: (InputError, ValueError),
    DatasetNotFoundError: (DatasetError, FileNotFoundError, OSError),
    DatasetCorruptError: (DatasetError, InputError, ValueError),
    MissingDependencyError: (ImportError,),
    OutputError: (OSError,),
    NonFiniteLossError: (RuntimeError,),
    TrainingInterrupted: (),
}


def test_every_error_is_a_biasloss_error_with_its_documented_bases():
    classes = {getattr(errors, name) for name in errors.__all__}
    assert classes == {BiaslossError, DatasetError, *DUAL_BASES}
    for cls in classes:
        assert issubclass(cls, BiaslossError) and issubclass(cls, Exception), cls
        assert getattr(biasloss, cls.__name__) is cls  # exported by the package too
    for cls, bases in DUAL_BASES.items():
        for base in bases:
            assert issubclass(cls, base), (cls, base)
    assert not issubclass(TrainingInterrupted, (SystemExit, KeyboardInterrupt))


def test_the_old_names_are_the_new_classes():
    from biasloss._io import OutputError as io_output_error
    from biasloss._io import TorchFileError
    from biasloss.analysis.plots import MissingDependencyError as plots_missing
    from biasloss.data import DatasetCorruptError as data_corrupt
    from biasloss.data import DatasetNotFoundError as data_not_found
    from biasloss.deploy import MissingRuntimeError
    from biasloss.train.checkpoint import CheckpointError as checkpoint_error
    from biasloss.train.engine import NonFiniteLossError as engine_nan

    assert MissingRuntimeError is plots_missing is MissingDependencyError
    assert (io_output_error, data_corrupt, data_not_found, checkpoint_error, engine_nan) == (
        OutputError, DatasetCorruptError, DatasetNotFoundError, CheckpointError, NonFiniteLossError)
    assert issubclass(TorchFileError, InputError)


def test_exit_codes_and_what_an_interruption_carries():
    assert InputError("x").exit_code == OutputError(errno.ENOSPC, "x").exit_code == 2
    assert DatasetNotFoundError("x").exit_code == MissingDependencyError("x").exit_code == 2
    assert NonFiniteLossError("x").exit_code == 1
    stopped = TrainingInterrupted("x", signum=signal.SIGTERM, checkpoint=Path("run/last.pt"))
    assert (stopped.exit_code, stopped.signum, stopped.checkpoint) == (143, signal.SIGTERM, "run/last.pt")
    assert TrainingInterrupted("x", signum=signal.SIGINT).exit_code == 130
    missing = InputFileNotFoundError("cannot read x.pt: no such file", "x.pt")
    assert (str(missing), missing.errno, missing.filename) == ("cannot read x.pt: no such file", errno.ENOENT, "x.pt")


def test_errors_py_imports_nothing_heavy():
    # the package's __init__ imports torch; errors.py itself must not: load it alone from its file
    probe = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('e', {errors.__file__!r}); "
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------
# A bug propagates with its traceback
# ---------------------------------------------------------------------------------------------


def _plant(kind: str):
    def bug(*args, **kwargs):
        if kind == "TypeError":
            return None + 1  # type: ignore[operator]
        if kind == "ValueError":
            raise ValueError("a planted bug")
        if kind == "FileNotFoundError":
            raise FileNotFoundError(errno.ENOENT, "a planted bug", "/nonexistent/internal/file")
        raise PermissionError(errno.EACCES, "a planted bug")

    return bug


@pytest.mark.parametrize("kind", ["TypeError", "ValueError", "FileNotFoundError", "PermissionError"])
def test_a_bug_inside_training_propagates(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BIASLOSS_DEBUG", raising=False)
    monkeypatch.setattr(loop, "train_one_epoch", _plant(kind))
    with pytest.raises(getattr(builtins, kind)) as e:
        main(["train", *FAST, "--out", str(tmp_path / "run")])
    assert not isinstance(e.value, BiaslossError)
    assert "biasloss: error" not in capsys.readouterr().err


def test_a_bug_shows_a_traceback_and_exits_1_from_the_command_line(tmp_path):
    planted = ("import runpy, sys; import biasloss.train.loop as loop; "
               "loop.train_one_epoch = lambda *a, **k: None + 1; "
               "sys.argv = ['biasloss', *sys.argv[1:]]; runpy.run_module('biasloss', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", planted, "train", *FAST, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "BIASLOSS_DEBUG": ""})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "TypeError" in proc.stderr, proc.stderr[-3000:]
    assert "biasloss: error" not in proc.stderr


def test_a_non_finite_loss_exits_1_by_its_class_not_its_name(tmp_path, monkeypatch, capsys):
    class LossWentNaN(NonFiniteLossError):  # another name: the exit status follows the class
        pass

    def nan(*args, **kwargs):
        raise LossWentNaN("training loss became nan in epoch 1")

    monkeypatch.setattr(loop, "train_one_epoch", nan)
    assert main(["train", *FAST, "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip() == "biasloss: error: training loss became nan in epoch 1"


# ---------------------------------------------------------------------------------------------
# The user's mistakes: one line, exit status 2, a BiaslossError underneath
# ---------------------------------------------------------------------------------------------


def _mistakes(tmp_path: Path) -> dict[str, tuple[list[str], type[BiaslossError], str]]:
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "text.pt").write_text("hello\n")
    return {
        "bad flag value": (["train", *FAST, "--lr", "nan", "--out", str(tmp_path / "run")], InputError, "--lr"),
        "missing checkpoint": (["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--device", "cpu"],
                               CheckpointError, "nope.pt"),
        "unreadable checkpoint": (["eval", "--checkpoint", str(tmp_path / "text.pt"), "--device", "cpu"],
                                  CheckpointError, "text.pt"),
        "missing --init weights": (["train", *FAST, "--init", str(tmp_path / "nope.pt"),
                                    "--out", str(tmp_path / "run")], InputFileNotFoundError, "--init"),
        "unwritable --out": (["train", *FAST, "--out", str(tmp_path / "afile" / "run")], InputError, "--out"),
        "missing results file": (["plot", "tradeoff", "--results", str(tmp_path / "nope.json"),
                                  "--out", str(tmp_path / "t.png")], InputFileNotFoundError, "nope.json"),
    }


MISTAKES = ["bad flag value", "missing checkpoint", "unreadable checkpoint", "missing --init weights",
            "unwritable --out", "missing results file"]


@pytest.mark.parametrize("case", MISTAKES)
def test_a_users_mistake_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    argv, cls, needle = _mistakes(tmp_path)[case]
    monkeypatch.delenv("BIASLOSS_DEBUG", raising=False)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("biasloss: error: ") and needle in err, err
    monkeypatch.setenv("BIASLOSS_DEBUG", "1")  # the error underneath, with its traceback
    with pytest.raises(cls):
        main(argv)


def test_a_users_mistake_from_the_command_line_is_one_line(tmp_path):
    argv = [sys.executable, "-m", "biasloss", "eval", "--checkpoint", str(tmp_path / "nope.pt")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "BIASLOSS_DEBUG": ""})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"biasloss: error: checkpoint not found: {tmp_path / 'nope.pt'}"]
    debug = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "BIASLOSS_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    last = debug.stderr.splitlines()[-1]
    assert last == f"biasloss.errors.CheckpointError: checkpoint not found: {tmp_path / 'nope.pt'}"


def test_an_output_the_file_system_refuses_is_an_output_error_at_its_source(tmp_path, monkeypatch):
    from biasloss._io import atomic_write_text

    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="cannot write .*d: Is a directory"):  # os.replace onto a directory
        atomic_write_text(tmp_path / "d", "x")
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match="cannot write"):  # its directory is a file
        atomic_write_text(tmp_path / "f" / "out.txt", "x")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "old.txt").write_text("old")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="No space left on device; the previous file is intact"):
        atomic_write_text(tmp_path / "old.txt", "new")
    assert (tmp_path / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f", "old.txt"]


def test_an_os_error_of_the_block_that_is_no_write_failure_propagates(tmp_path):
    from biasloss._io import atomic_path

    with pytest.raises(FileNotFoundError) as e, atomic_path(tmp_path / "out.txt"):
        open(tmp_path / "missing-input.txt")  # noqa: SIM115 - the block's own bug, not the output's
    assert not isinstance(e.value, BiaslossError)
    with pytest.raises(OutputError, match="cannot write .*out.txt: No space left on device"), \
            atomic_path(tmp_path / "out.txt"):
        raise OSError(errno.ENOSPC, "No space left on device")  # a full disk while the block writes
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# An interrupted training: TrainingInterrupted, never SystemExit; exit 130 / 143
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_fit_raises_training_interrupted_when_the_stop_flag_is_set(sig, tmp_path, monkeypatch, capsys):
    real_enter, real_fit, raised = loop.StopFlag.__enter__, loop.fit, []

    def enter(self):
        real_enter(self)
        os.kill(os.getpid(), sig)  # handled before the first step: the flag is set
        return self

    def fit(*args, **kwargs):
        try:
            return real_fit(*args, **kwargs)
        except BaseException as e:
            raised.append(e)
            raise

    monkeypatch.setattr(loop.StopFlag, "__enter__", enter)
    monkeypatch.setattr(loop, "fit", fit)
    out = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(out)]) == 128 + sig
    (e,) = raised
    assert type(e) is TrainingInterrupted and not isinstance(e, SystemExit)
    assert (e.signum, e.checkpoint, e.exit_code) == (sig, str(out / "last.pt"), 128 + sig)
    assert (out / "last.pt").is_file()
    err = capsys.readouterr().err
    assert f"biasloss: interrupted by {signal.Signals(sig).name}: wrote {out / 'last.pt'}" in err
    assert "biasloss: error" not in err


def test_the_stop_flag_remembers_the_first_signal():
    with loop.StopFlag() as stop:
        assert (stop.requested, stop.signum) == (False, None)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert (stop.requested, stop.signum) == (True, signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal does not change which one stopped it
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM


def _train_then(sig: int, out: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "biasloss", "train", "--dataset", "digits", "--epochs", "50", "--batch-size", "16",
           "--device", "cpu", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BIASLOSS_DEBUG": ""})
    try:
        deadline = time.monotonic() + 240
        while not out.is_dir():  # the run directory exists once the stop flag is in place
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_biasloss_train_writes_last_pt_and_exits_128_plus_it(sig, code, tmp_path):
    from biasloss.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    returncode, err = _train_then(sig, out)
    assert returncode == code, err[-3000:]
    assert "Traceback" not in err and "biasloss: error" not in err, err[-3000:]
    assert f"biasloss: interrupted by {signal.Signals(sig).name}: wrote {out / 'last.pt'}" in err, err[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert 0 <= ckpt["epoch"] < 50


def test_the_library_raises_no_system_exit():
    src = Path(biasloss.__file__).parent
    offenders = [f"{path.relative_to(src)}:{n}" for path in src.rglob("*.py") if path.name != "__main__.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if "raise SystemExit" in line]
    assert offenders == []
