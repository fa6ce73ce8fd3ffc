"""Every script in ``benchmarks/`` runs: ``--help`` (all of them in one process: importing torch once),
then a real run at the smallest sizes its options allow (seconds, one thread), so that no benchmark
rots unseen when the library changes under it. A script without an entry in :data:`TINY` or a test
module of its own (``tests/test_<script>.py``) fails :func:`test_every_benchmark_has_a_tiny_run`.

Runs that need an optional extra (ONNX Runtime, scikit-learn's digits) or the Fashion-MNIST files
are skipped where those are missing. Left out for time: ``bench_deploy.py``'s ExecuTorch runtime
(lowering a model to XNNPACK takes over a minute; tests/test_deploy.py covers the library's path)
and ``device_check.py --compile``. ``device_check.py``'s dry run still starts seven ``biasloss``
processes (about a minute on 2 cores) and is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def _fashion_mnist() -> None:
    from biasloss.data import DatasetNotFoundError, load_arrays

    try:
        load_arrays("fashion-mnist")
    except DatasetNotFoundError as e:
        pytest.skip(f"no Fashion-MNIST: {e}")


def _onnx() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")


def _digits() -> None:
    pytest.importorskip("sklearn")


def _scenes(tmp: Path) -> list[str]:
    """Tiny scenes made here (the script would make the full 10,000)."""
    from biasloss.detection import make_scenes

    _fashion_mnist()
    data = make_scenes(tmp / "scenes", train=8, val=2, test=4, size=64)
    return ["--data", str(data), "--out", str(tmp / "run"), "--", "--size", "64", "--batch-size", "4", "--epochs", "1",
            "--workers", "0", "--device", "cpu"]


#: script -> (what it needs, a function of the test's tmp_path giving the arguments of a run of a few seconds)
TINY = {
    "bench_data.py": (_fashion_mnist, lambda tmp: ["--steps", "2", "--reps", "1", "--workers", "0", "--batch-size",
                                                   "16", "--threads", "1"]),
    "bench_deploy.py": (_onnx, lambda tmp: ["--models", "skipblocknet_xs", "--settings", "fashion-mnist", "--runtimes",
                                            "onnx", "--rounds", "2", "--warmup", "1", "--json", str(tmp / "out.json")]),
    "bench_detect_scenes.py": (lambda: None, _scenes),
    "bench_latency.py": (_onnx,
                         lambda tmp: ["--models", "skipblocknet_xs", "torchvision.mobilenet_v3_small", "--size", "32",
                                      "--rounds", "2", "--warmup", "1", "--json", str(tmp / "out.json")]),
    "bench_loss.py": (lambda: None, lambda tmp: ["--batch", "4", "--classes", "10", "--shape", "8", "3", "3",
                                                 "--reps", "2", "--threads", "1"]),
    "bench_optimizer.py": (lambda: None, lambda tmp: ["--rounds", "2"]),
    "bench_voc_map.py": (lambda: None, lambda tmp: ["--images", "20", "--per-image", "10", "--repeats", "1",
                                                    "--threads", "1"]),
    "device_check.py": (_digits, lambda tmp: ["--device", "cpu", "--dataset", "digits", "--limit", "16",
                                              "--skip-compile", "--out", str(tmp / "check")]),
}
#: what a run's output must show
EXPECT = {
    "bench_data.py": "speed-up (torchvision / in-memory)",
    "bench_deploy.py": "int8 / fp32",
    "bench_detect_scenes.py": "agrees",
    "bench_latency.py": "ONNX Runtime",
    "bench_loss.py": "ratio bias/ce",
    "bench_optimizer.py": "fused / loop",
    "bench_voc_map.py": "exact area",
    "device_check.py": "all checks passed",
}
#: the scripts that write a JSON record (where, relative to tmp_path); each must name the code's git state
RECORDS = {"bench_deploy.py": "out.json", "bench_detect_scenes.py": "run/result.json", "bench_latency.py": "out.json"}


#: runs each script given as an argument with --help in this one process
HELP = """
import runpy, sys
sys.path.insert(0, sys.argv[1])  # the scripts import each other (bench_latency)
for script in sys.argv[2:]:
    print("=== " + script, flush=True)
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(f"{sys.path[0]}/{script}", run_name="__main__")
    except SystemExit as e:
        print(f"=== exit {e.code or 0}", flush=True)
    else:
        print("=== exit none", flush=True)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _run(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_every_benchmark_has_a_tiny_run():
    assert SCRIPTS, BENCHMARKS
    own = {s for s in SCRIPTS if Path(__file__).with_name(f"test_{Path(s).stem}.py").is_file()}
    missing = set(SCRIPTS) - set(TINY) - own
    assert not missing, f"give {sorted(missing)} a tiny run here (TINY, EXPECT) or a test module of its own"
    assert set(TINY) == set(EXPECT) and set(TINY) <= set(SCRIPTS)


def test_help_of_every_script(tmp_path):
    proc = subprocess.run([sys.executable, "-c", HELP, str(BENCHMARKS), *SCRIPTS], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocks = proc.stdout.split("=== exit ")  # "=== <script>\n<its help>" then "=== exit <status>\n"
    assert len(blocks) == len(SCRIPTS) + 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    for script, block, after in zip(SCRIPTS, blocks, blocks[1:]):
        status = after.split("\n", 1)[0]
        assert block.split("=== ")[-1].startswith(script + "\n") and "usage:" in block and status == "0", (
            script, block[-2000:], proc.stderr[-3000:])


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s == "device_check.py" else s
                                    for s in sorted(TINY)])
def test_a_tiny_run(script, tmp_path):
    needs, argv = TINY[script]
    needs()
    proc = _run(script, *argv(tmp_path), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert EXPECT[script] in out, out[-4000:]
    if script in RECORDS:
        record = json.loads((tmp_path / RECORDS[script]).read_text())
        git = record["git"] if "git" in record else record["machine"]["git"]
        assert set(git) == {"commit", "dirty"}
        # the tests run from a git checkout or from an unpacked source tree: a commit, or nothing known
        assert git["commit"] is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))
