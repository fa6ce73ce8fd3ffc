"""``biasloss reproduce-check RECORD``: does a published run still repeat at this commit?

A run record (``<grid>/records/<run>.json``, written by ``biasloss reproduce``: what
``docs/results/`` keeps of every run) holds the ``biasloss train`` command that trained the run,
the thread count it trained with (``machine.threads``), its ``metrics.jsonl`` lines and, since the
records name their code, the git commit and whether the tree was dirty. :func:`check_record`
trains that command again here, with the code of the working tree, into a temporary directory
(the command's ``--out`` replaced) with torch's intra-op thread count set to the record's, and
compares every ``metrics.jsonl`` line with the record's, epoch by epoch, each line's keys in the
record's order, timings (keys ending in ``_s``) left out. The answer is "same" or the first
difference, e.g. ``epoch 1: val_top1 72.81 in the record, 73.51 at HEAD`` (the command also
prints the other differences of that epoch). Keys only the new run has (metrics added since the
record) are not compared.

``--epochs N`` checks the first N epochs only (the run stops after epoch N, on the record's
schedule): a first difference usually shows in epoch 1, at a fraction of the cost.

Floating point results also depend on the CPU family, the torch build and the thread count: a
difference on another machine than the record's (the result names both CPUs) is not by itself a
change of the code. Exit status 0: same; 1: differs; 2: not a record, or a command that no longer
parses.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from biasloss.errors import InputError, InputFileNotFoundError

__all__ = ["CheckResult", "check_record", "compare_metrics", "is_timing", "register"]


def is_timing(key: str) -> bool:
    """A timing (``time_s``, ``train_s``, ``train_img_s``, ...): never compared."""
    return key.endswith("_s")


def compare_metrics(recorded: Sequence[Mapping[str, Any]], measured: Sequence[Mapping[str, Any]], *,
                    same: Callable[[str, Any, Any], bool] | None = None,
                    labels: tuple[str, str] = ("in the record", "at HEAD")) -> list[str]:
    """Every difference between two runs' ``metrics.jsonl`` lines, in ``recorded``'s order of
    epochs and of keys: ``"epoch 1: val_top1 72.81 in the record, 73.51 at HEAD"``. Timings
    (:func:`is_timing`) and keys only ``measured`` has are not compared; ``same(key, recorded,
    measured)`` decides (default ``==``)."""
    same = same or (lambda key, a, b: a == b)
    by_epoch = {line.get("epoch"): line for line in measured}
    out = []
    for line in recorded:
        epoch = line.get("epoch")
        if epoch not in by_epoch:
            out.append(f"epoch {epoch}: {labels[0]}, missing {labels[1]}")
            continue
        other = by_epoch[epoch]
        for key, value in line.items():
            if is_timing(key):
                continue
            if key not in other:
                out.append(f"epoch {epoch}: {key} {value} {labels[0]}, missing {labels[1]}")
            elif not same(key, value, other[key]):
                out.append(f"epoch {epoch}: {key} {value} {labels[0]}, {other[key]} {labels[1]}")
    return out


@dataclass
class CheckResult:
    """What :func:`check_record` found."""

    record: str  # the record's path
    command: str  # the record's command, as recorded
    epochs: int  # the epochs compared: 1..epochs
    record_epochs: int  # the epochs the record holds
    differences: list[str]  # every difference, in the record's order of epochs and keys
    record_git: dict[str, Any] | None  # the record's {"commit", "dirty"}, None for a record without them
    head_git: dict[str, Any]  # this tree's {"commit", "dirty"}
    threads: int  # torch threads the check trained with (the record's)
    record_cpu: str | None
    cpu: str

    @property
    def same(self) -> bool:
        return not self.differences

    @property
    def difference(self) -> str | None:
        """The first difference, ``None`` when the same."""
        return self.differences[0] if self.differences else None

    def summary(self) -> str:
        """A few lines: what was checked against what, a note when the CPUs differ, then "same" or the
        first difference, the other differences of its epoch and how many later epochs add."""
        rec = self.record_git or {}
        made = ("a record that names no commit" if not rec.get("commit") else
                f"a record of commit {rec['commit'][:12]}{' (tree dirty)' if rec.get('dirty') else ''}")
        head = self.head_git.get("commit")
        here = (f"HEAD {head[:12]}{' with uncommitted changes' if self.head_git.get('dirty') else ''}"
                if head else "this tree (commit unknown)")
        lines = [f"{self.record}: {made}, epochs 1-{self.epochs} of {self.record_epochs} re-run at {here}, "
                 f"{self.threads} thread{'s' if self.threads != 1 else ''}"]
        if self.record_cpu and self.record_cpu != self.cpu:
            lines.append(f"note: the record was made on {self.record_cpu!r}, this is {self.cpu!r}; floating point "
                         "can differ between CPU families")
        if self.same:
            lines.append("same")
            return "\n".join(lines)
        lines.append(f"differs: {self.difference}")
        epoch = self.difference.split(":", 1)[0]  # "epoch 1"
        also = [d.split(": ", 1)[1] for d in self.differences[1:] if d.split(":", 1)[0] == epoch]
        if also:
            lines.append(f"  also in {epoch}: " + "; ".join(also))
        later = len(self.differences) - 1 - len(also)
        if later:
            lines.append(f"  and {later} more difference{'s' if later != 1 else ''} in later epochs")
        return "\n".join(lines)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputFileNotFoundError(f"no record {path}" + (" (a directory)" if path.is_dir() else ""), path)
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a run record (not JSON: {e})") from None
    metrics = record.get("metrics") if isinstance(record, dict) else None
    ok = (isinstance(metrics, list) and metrics and isinstance(record.get("command"), str)
          and all(isinstance(m, dict) and isinstance(m.get("epoch"), int) for m in metrics))
    if not ok:
        raise InputError(f"{path}: not a run record (one has a 'command' and its 'metrics' lines, as "
                         "'biasloss reproduce' writes under <out>/records/)")
    return record


def _train_config(command: str, where: Path):
    """The :class:`~biasloss.train.runner.TrainConfig` of a recorded ``biasloss train ...``
    command, parsed by the command line of this tree (its ``train`` command)."""
    from biasloss.train.runner import TrainConfig
    from biasloss.train.train_cli import register

    argv = shlex.split(command)
    if argv[:2] != ["biasloss", "train"]:
        raise InputError(f"{where}: the record's command is not 'biasloss train ...': {command}")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser = argparse.ArgumentParser(prog="biasloss")
            register(parser.add_subparsers(dest="command"))
            args = parser.parse_args(argv[1:])
    except SystemExit:
        message = err.getvalue().strip().splitlines()
        raise InputError(f"{where}: the record's command does not parse at HEAD "
                         f"({message[-1] if message else 'argparse'}): {command}") from None
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def check_record(path: str | Path, *, workdir: str | Path | None = None, epochs: int | None = None) -> CheckResult:
    """Re-run the record at ``path`` with this tree's code and compare (see the module doc).

    ``workdir``: where the run trains (kept; it must not hold a run); default a temporary
    directory, removed afterwards. ``epochs``: check only the first ``epochs`` epochs."""
    import torch

    from biasloss._checks import positive
    from biasloss._provenance import cpu_name, git_state
    from biasloss.train.loop import read_metrics
    from biasloss.train.runner import run_train

    path = Path(path)
    positive("--epochs", epochs, kind=int)
    record = _read(path)
    recorded = sorted(record["metrics"], key=lambda m: m["epoch"])
    last = recorded[-1]["epoch"]
    upto = min(epochs, last) if epochs is not None else last
    config = _train_config(record["command"], path)
    threads = (record.get("machine") or {}).get("threads")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="biasloss-recheck-")))
        config.out, config.resume = str(root / str(record.get("name") or path.stem)), None
        config.stop_after = upto if upto < last else None  # on the record's schedule
        stack.callback(torch.set_num_threads, torch.get_num_threads())  # restored on the way out
        torch.set_num_threads(threads)
        run_train(config)
        measured = read_metrics(Path(config.out) / "metrics.jsonl", upto)
    diffs = compare_metrics([m for m in recorded if m["epoch"] <= upto], measured)
    git = record.get("git") if isinstance(record.get("git"), dict) else None
    return CheckResult(record=str(path), command=record["command"], epochs=upto, record_epochs=last,
                       differences=diffs, record_git=git, head_git=git_state(),
                       threads=threads, record_cpu=(record.get("machine") or {}).get("cpu"), cpu=cpu_name())


def _run(args: argparse.Namespace) -> int:
    result = check_record(args.record, workdir=args.out, epochs=args.epochs)
    print(result.summary(), flush=True)
    return 0 if result.same else 1


def register(subparsers) -> None:
    """Add ``biasloss reproduce-check`` to the CLI."""
    p = subparsers.add_parser(
        "reproduce-check",
        description="Train a run record's command again (its thread count, a temporary --out) with this tree's "
                    "code and compare every metrics.jsonl line with the record's, epoch by epoch, timings left "
                    "out. Prints 'same' or the first difference and the record's commit. Exit status 0: same, "
                    "1: differs, 2: not a record.",
    )
    p.add_argument("record", help="a record: <grid>/records/<run>.json, e.g. under docs/results/")
    p.add_argument("--epochs", type=int, metavar="N", help="check only the first N epochs (default: all)")
    p.add_argument("--out", metavar="DIR", help="train here and keep the run (default: a temporary directory)")
    p.set_defaults(func=_run)
