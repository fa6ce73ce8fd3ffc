"""The training numerics, pinned: a change that alters them cannot land unnoticed.

Five small deterministic runs, in one fresh process on one torch thread (about 30 s of one core):
``biasloss train`` on scikit-learn's digits (all 1437 training and 360 test images, the digits
recipe, 2 epochs, seed 0) with MobileNetV3-Small 0.5x (a small timm network, as in
tests/test_learning.py) and ``ce``, ``focal``, ``bias`` and ``bias`` with ``scaling="running_min"``,
and ``biasloss detect train`` on tiny Fashion-MNIST scenes (SSD on SkipblockNet-XS, 16 train and 4
test scenes of 64 px, batch 4, 2 epochs; skipped without Fashion-MNIST). The classifiers train with
``--lr 0.01`` instead of the recipe's 0.1, which in so short a schedule blows up the BatchNorm
statistics of the first epoch (validation losses of 10^4-10^5): a chaotic run that would differ
wildly between CPUs; at 0.01 they learn smoothly (20-40 % top-1 after one epoch, 58-74 % after
two). Every metric of their ``metrics.jsonl`` lines except the timings (keys ending in ``_s``) is
compared with ``tests/pinned_metrics.json``, epoch by epoch, key by key. Keys the pins lack (a
metric added since) are not compared; a pinned key the run lacks fails.

Floating point results differ between CPU families (the vector instructions torch's kernels use),
torch builds and thread counts. The pins carry a fingerprint of where they were made (CPU model
name, ``torch.backends.cpu.get_cpu_capability()``, torch version, torch threads):

- where this machine's fingerprint is the pins', the comparison is **exact** (``==``);
- elsewhere it is within tolerances loose enough not to be flaky and tight enough to catch a
  changed recipe, loss or optimizer: :data:`TOLERANCE_POINTS` percentage points for top-1, top-5
  and mAP, :data:`TOLERANCE_CLASS_POINTS` for per-class top-1 (a class has about 36 of the 360
  test images), and :data:`TOLERANCE_REL` relative (plus :data:`TOLERANCE_ABS`) for everything
  else (losses, learning rates, Bias Loss weight statistics). The test says which it did.

To change the numerics on purpose, rewrite the pins (on the machine that should hold them)::

    BIASLOSS_UPDATE_PINS=1 python -m pytest tests/test_pinned_metrics.py

and state the change in the commit's message; results published under ``docs/results/`` must then
be re-run at the new commit or relabelled with the commit that produced them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from biasloss.analysis.recheck import compare_metrics, is_timing

pytest.importorskip("sklearn")  # the digits

PINS = Path(__file__).with_name("pinned_metrics.json")
UPDATE = os.environ.get("BIASLOSS_UPDATE_PINS") == "1"
TOLERANCE_POINTS = 1.5
TOLERANCE_CLASS_POINTS = 10.0
TOLERANCE_REL = 0.02
TOLERANCE_ABS = 0.01

#: name -> TrainConfig options (classification) of each pinned run
CLASSIFIERS = {
    "ce": {"loss": "ce"},
    "focal": {"loss": "focal"},
    "bias": {"loss": "bias"},
    "bias-running_min": {"loss": "bias", "scaling": "running_min"},
}
COMMON = {"dataset": "digits", "model": "mobilenetv3_small_050", "epochs": 2, "lr": 0.01, "seed": 0, "device": "cpu",
          "progress": False}
DETECTION = "detect-scenes"
SCENES = {"train": 16, "val": 0, "test": 4, "size": 64}
DETECT_ARGV = ["--size", "64", "--batch-size", "4", "--epochs", "2", "--workers", "0", "--seed", "0",
               "--device", "cpu", "--no-progress"]

#: trains every pinned run in a fresh process on one thread; prints {"fingerprint", "runs"} as JSON
SCRIPT = """
import contextlib, json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from biasloss._provenance import environment
from biasloss.cli import main
from biasloss.data import DatasetNotFoundError
from biasloss.detection import make_scenes
from biasloss.train.runner import TrainConfig, run_train

work, spec = Path(sys.argv[1]), json.loads(sys.argv[2])

def lines(run):
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]

runs = {}
with contextlib.redirect_stdout(sys.stderr):
    for name, options in spec["classifiers"].items():
        run_train(TrainConfig(**spec["common"], **options, out=str(work / name)))
        runs[name] = lines(work / name)
    try:
        data = make_scenes(work / "scenes", **spec["scenes"])
    except DatasetNotFoundError as e:
        runs[spec["detection"]] = "no Fashion-MNIST: " + str(e)
    else:
        out = work / spec["detection"]
        assert main(["detect", "train", "--dataset", "scenes", "--data-dir", str(data), "--out", str(out),
                     *spec["detect_argv"]]) == 0
        runs[spec["detection"]] = lines(out)
machine = environment()["machine"]
fingerprint = {"cpu": machine["cpu"], "cpu_capability": machine["cpu_capability"], "torch": torch.__version__,
               "threads": torch.get_num_threads()}
print(json.dumps({"fingerprint": fingerprint, "runs": runs}))
"""


def _without_timings(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if not is_timing(k)} for line in lines]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, Any]:
    """The runs' metrics at this tree and this machine's fingerprint (and, with
    ``BIASLOSS_UPDATE_PINS=1``, the pins rewritten from them)."""
    spec = {"classifiers": CLASSIFIERS, "common": COMMON, "scenes": SCENES, "detection": DETECTION,
            "detect_argv": DETECT_ARGV}
    work = tmp_path_factory.mktemp("pinned")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(work), json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if UPDATE:
        missing = [name for name, lines in result["runs"].items() if isinstance(lines, str)]
        assert not missing, f"cannot pin {missing}: {[result['runs'][m] for m in missing]}"
        pins = {"about": "pinned metrics of tests/test_pinned_metrics.py; rewrite with BIASLOSS_UPDATE_PINS=1 "
                         "python -m pytest tests/test_pinned_metrics.py (see that file)",
                "fingerprint": result["fingerprint"],
                "runs": {name: _without_timings(lines) for name, lines in result["runs"].items()}}
        PINS.write_text(json.dumps(pins, indent=1) + "\n")
    return result


def _close(key: str, pinned: float, value: float) -> bool:
    if "top1" in key or "top5" in key or key == "map" or key.startswith("map_"):
        return abs(value - pinned) <= TOLERANCE_POINTS
    return abs(value - pinned) <= TOLERANCE_ABS + TOLERANCE_REL * abs(pinned)


def _same(key: str, pinned: Any, value: Any, exact: bool) -> bool:
    if isinstance(pinned, list):
        if not isinstance(value, list) or len(value) != len(pinned):
            return False
        if exact or not all(isinstance(v, (int, float)) for v in [*pinned, *value]):
            return value == pinned
        return all(abs(v - p) <= TOLERANCE_CLASS_POINTS if key.endswith("class_top1") else _close(key, p, v)
                   for p, v in zip(pinned, value))
    if exact or isinstance(pinned, (bool, str)) or not isinstance(pinned, (int, float)) or pinned is None:
        return value == pinned
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return _close(key, pinned, value)


def differences(pinned: list[dict[str, Any]], lines: list[dict[str, Any]], *, exact: bool) -> list[str]:
    """Every metric of ``lines`` (a run's metrics.jsonl) that is not the pinned one, in the pins'
    order: ``"epoch 1: val_top1 72.81 pinned, 73.51 now"`` (``reproduce-check``'s comparison)."""
    if [p.get("epoch") for p in pinned] != [line.get("epoch") for line in lines]:
        return [f"epochs {[p.get('epoch') for p in pinned]} pinned, {[line.get('epoch') for line in lines]} now"]
    return compare_metrics(pinned, lines, same=lambda key, p, v: _same(key, p, v, exact), labels=("pinned", "now"))


HOW_TO_UPDATE = (
    "If the training numerics changed on purpose, rewrite the pins with `BIASLOSS_UPDATE_PINS=1 python -m pytest "
    "tests/test_pinned_metrics.py` (it rewrites tests/pinned_metrics.json), state the change of numerics in the "
    "commit message, and re-run the results published under docs/results/ at the new commit or relabel them with "
    "the commit that produced them (`biasloss reproduce-check RECORD` tells whether a record still repeats)."
)


@pytest.mark.parametrize("name", [*CLASSIFIERS, DETECTION])
def test_metrics_are_the_pinned_ones(measured, name):
    if UPDATE:
        pytest.skip(f"BIASLOSS_UPDATE_PINS=1: rewrote {PINS}")
    assert PINS.is_file(), f"no {PINS}. {HOW_TO_UPDATE}"
    pins = json.loads(PINS.read_text())
    lines = measured["runs"][name]
    if isinstance(lines, str):
        pytest.skip(lines)
    assert name in pins["runs"], f"{name} is not pinned. {HOW_TO_UPDATE}"
    exact = measured["fingerprint"] == pins["fingerprint"]
    how = ("exactly (this machine's fingerprint is the pins')" if exact else
           f"within tolerances ({TOLERANCE_POINTS} points of top-1/top-5/mAP, {TOLERANCE_CLASS_POINTS} of per-class "
           f"top-1, {TOLERANCE_REL:.0%} relative + {TOLERANCE_ABS} otherwise), the pins being made on "
           f"{pins['fingerprint']} and this machine being {measured['fingerprint']}")
    diffs = differences(pins["runs"][name], lines, exact=exact)
    assert not diffs, (f"{name}: the metrics differ from tests/pinned_metrics.json, compared {how}:\n  "
                       + "\n  ".join(diffs[:12]) + f"\n{HOW_TO_UPDATE}")


def test_the_comparison_itself():
    pinned = [{"epoch": 1, "val_top1": 72.81, "val_loss": 0.5, "val_class_top1": [50.0, 60.0], "time_s": 3.0}]
    now = [{"epoch": 1, "val_top1": 73.51, "val_loss": 0.5, "val_class_top1": [50.0, 60.0], "time_s": 9.0,
            "z_mean": 0.7}]
    assert differences(pinned, now, exact=True) == ["epoch 1: val_top1 72.81 pinned, 73.51 now"]
    assert differences(pinned, now, exact=False) == []  # within 1.5 points; timings and new keys are not compared
    now[0]["val_loss"] = 0.5000001
    assert differences(pinned, now, exact=True) == ["epoch 1: val_top1 72.81 pinned, 73.51 now",
                                                    "epoch 1: val_loss 0.5 pinned, 0.5000001 now"]
    now[0]["val_loss"] = 0.6
    assert differences(pinned, now, exact=False) == ["epoch 1: val_loss 0.5 pinned, 0.6 now"]
    del now[0]["val_class_top1"]
    assert "epoch 1: val_class_top1 [50.0, 60.0] pinned, missing now" in differences(pinned, now, exact=False)
    assert differences(pinned, [], exact=True) == ["epochs [1] pinned, [] now"]
