"""``benchmarks/evidence_grid.py``: issue 23's evidence grid as side-by-side ``reproduce ablation``
children under a wall-clock budget, here at its smallest on scikit-learn's digits, one thread."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "evidence_grid.py"
ARMS = ["ce", "bias", "ce-x-c", "rank", "running_min"]


def _module():
    """The script as a module (registered: its dataclasses look their module up)."""
    if "evidence_grid" not in sys.modules:
        spec = importlib.util.spec_from_file_location("evidence_grid", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["evidence_grid"] = module
        spec.loader.exec_module(module)
    return sys.modules["evidence_grid"]


def _run(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    pytest.importorskip("sklearn")  # the digits
    tiny = ["--out", str(tmp_path / "eg"), "--device", "cpu", "--dataset", "digits", "--epochs", "1", "--limit", "64",
            "--models", "skipblocknet_xs", "--seeds", "0", "--jobs", "1"]
    return subprocess.run([sys.executable, str(SCRIPT), *tiny, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "eg" / "evidence_grid.json").read_text())


def test_arms_are_where_reproduce_writes_them(tmp_path):
    from biasloss.analysis.reproduce import ABLATIONS

    grid = _module()
    arms = grid.arms_of(list(grid.VARIANTS))
    assert [a.name for a in arms] == ARMS
    assert {a.name: (a.part, a.loss) for a in arms} == {
        "ce": ("default", "ce"), "bias": ("default", "bias"), "ce-x-c": ("ce-x-c", "ce"), "rank": ("rank", "bias"),
        "running_min": ("running_min", "bias")}
    assert ABLATIONS["ce-x-c"]["loss"] == "ce" and "loss" not in ABLATIONS["rank"]
    assert grid.record_path(tmp_path, "m", arms[2], 3) == tmp_path / "evidence-m/ce-x-c/records/m-ce-s3.json"


def test_the_aggregation_takes_the_most_finished_runs():
    choose = _module().choose_aggregation
    variants, seeds = ["ce-x-c", "rank", "running_min"], [0, 1, 2, 3, 4]
    every = {arm: seeds for arm in ARMS}
    assert choose(every, variants, seeds) == (seeds, variants)
    # the budget ended during ce-x-c: every seed with ce and bias, no variant anywhere
    assert choose({"ce": seeds, "bias": seeds, "ce-x-c": [], "rank": [], "running_min": []}, variants, seeds) == (
        seeds, [])
    # ce-x-c finished for 4 seeds (16 runs) beats all 5 seeds without it (10 runs)
    done = {"ce": seeds, "bias": seeds, "ce-x-c": [0, 1, 2, 3], "rank": [], "running_min": []}
    assert choose(done, variants, seeds) == ([0, 1, 2, 3], ["ce-x-c"])
    assert choose({"ce": [0, 1], "bias": [1], "ce-x-c": [1], "rank": [], "running_min": []}, variants, seeds) == (
        [1], ["ce-x-c"])
    assert choose({"ce": [0], "bias": [], "ce-x-c": [], "rank": [], "running_min": []}, variants, seeds) == ([], [])


def test_a_tiny_grid_trains_every_arm_and_aggregates(tmp_path):
    proc = _run(tmp_path, "--archive", str(tmp_path / "eg.tar.gz"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = _summary(tmp_path)
    assert summary["finished"] == {"skipblocknet_xs": {arm: [0] for arm in ARMS}}
    assert summary["unfinished"] == [] and summary["failed"] == [] and not summary["budget_reached"]
    [child] = summary["commands"]
    assert child["exit_code"] == 0 and " reproduce ablation " in child["command"] and child["wall_s"] > 0
    assert "--variants ce-x-c rank running_min" in child["command"] and "--seeds 0 " in child["command"]
    [aggregation] = summary["aggregation"]
    assert aggregation["exit_code"] == 0
    assert summary["results"]["skipblocknet_xs"] == {"results": "evidence-skipblocknet_xs/results.md", "seeds": [0],
                                                      "arms": ARMS, "written": True}
    assert set(summary["git"]) == {"commit", "dirty"} and "torch" in summary["versions"]
    root = tmp_path / "eg" / "evidence-skipblocknet_xs"
    results = json.loads((root / "results.json").read_text())
    assert [row["name"] for row in results["rows"]] == ["ce (cross-entropy)", "default Bias Loss", *ARMS[2:]]
    assert all(row["n"] == 1 for row in results["rows"])
    assert "ce-x-c" in (root / "results.md").read_text()
    assert (tmp_path / "eg" / "logs" / "skipblocknet_xs-s0.log").read_text().startswith(sys.executable)
    assert "| skipblocknet_xs | 1/1 (" in out
    with tarfile.open(tmp_path / "eg.tar.gz") as tar:
        names = tar.getnames()
    assert "eg/evidence_grid.json" in names and "eg/evidence-skipblocknet_xs/results.md" in names
    assert "eg/evidence-skipblocknet_xs/ce-x-c/records/skipblocknet_xs-ce-s0.json" in names
    assert not [n for n in names if n.endswith((".pt", ".lock"))]


def test_the_budget_stops_the_children_and_names_the_unfinished_runs(tmp_path):
    proc = _run(tmp_path, "--budget-s", "1", "--seeds", "0", "1", "--jobs", "2", timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "budget reached" in out and "unfinished (10)" in out
    summary = _summary(tmp_path)
    assert summary["budget_reached"] and summary["failed"] == [] and summary["aggregation"] == []
    assert len(summary["commands"]) == 2 and all(c["stopped_by_budget"] for c in summary["commands"])
    assert sorted(summary["unfinished"]) == sorted(f"skipblocknet_xs-{a}-s{s}" for a in ARMS for s in (0, 1))
    assert summary["results"] == {"skipblocknet_xs": None}


def test_a_failing_child_is_retried_then_reported(tmp_path, capsys):
    grid = _module()
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    ok = [sys.executable, "-c", "pass"]
    children = [grid.Child("fails", fail, tmp_path / "logs" / "fails.log", 1),
                grid.Child("works", ok, tmp_path / "logs" / "works.log", 1)]
    attempts = grid.run_children(children, jobs=2, deadline=None, grace_s=5, retries=1, stop=grid.Stop(), out=tmp_path,
                                 t0=0.0, on_exit=lambda: None)
    assert [(c.name, c.attempt, c.rc) for c in attempts] == [("fails", 0, 3), ("works", 0, 0), ("fails", 1, 3)]
    assert (tmp_path / "logs" / "fails.retry1.log").read_text().startswith(sys.executable)
    assert "fails: exit 3 after" in capsys.readouterr().out


def test_a_child_past_the_grace_is_killed(tmp_path):
    grid = _module()
    # a child that ignores SIGTERM (inherited: ignored from its start, no race with its start-up)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        t0 = time.monotonic()
        [child] = grid.run_children([grid.Child("stubborn", [sys.executable, "-c", "import time; time.sleep(60)"],
                                                tmp_path / "s.log", 1)],
                                    jobs=1, deadline=t0 + 0.5, grace_s=0.5, retries=1, stop=grid.Stop(), out=tmp_path,
                                    t0=t0, on_exit=lambda: None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert child.stopped and child.rc == -signal.SIGKILL and child.wall_s < 30
