"""Every script in ``benchmarks/`` runs: ``--help`` (all of them in one process: importing torch once),
then a real run at the smallest sizes its options allow (seconds, one thread), so that no benchmark
rots unseen when the library changes under it. A script without an entry in :data:`TINY` or a test
module of its own (``tests/test_<script>.py``) fails :func:`test_every_benchmark_has_a_tiny_run`.

Runs that need an optional extra (ONNX Runtime, scikit-learn's digits) or the Fashion-MNIST files
are skipped where those are missing. Left out for time: ``bench_deploy.py``'s ExecuTorch runtime
(lowering a model to XNNPACK takes over a minute; tests/test_deploy.py covers the library's path)
and ``device_check.py --compile``; ``device_check.py``'s dry run trains and evaluates one row
(``--rows fp16``: two ``biasloss`` processes, about 20 s) and is marked ``slow``; its helpers (stdout
read apart from stderr, the top-1 tolerance, the rows) are tested here without training.
"""

from __future__ import annotations

import importlib.util
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


def _data_benchmark() -> list[str]:
    """device_check.py's data benchmark reads Fashion-MNIST: ``--skip-data`` where it is missing."""
    from biasloss.data import find_fashion_mnist

    return [] if find_fashion_mnist() else ["--skip-data"]


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
    "bench_start.py": (lambda: None, lambda tmp: ["--reps", "1"]),
    "bench_train_epoch.py": (lambda: None, lambda tmp: ["--ref", "HEAD", "--dataset", "digits", "--limit", "128",
                                                        "--reps", "1", "--threads", "1"]),
    "bench_voc_map.py": (lambda: None, lambda tmp: ["--images", "20", "--per-image", "10", "--repeats", "1",
                                                    "--threads", "1"]),
    "device_check.py": (_digits, lambda tmp: ["--device", "cpu", "--dataset", "digits", "--limit", "16",
                                              "--skip-compile", "--rows", "fp16", "--out", str(tmp / "check"),
                                              *_data_benchmark()]),
}
#: what a run's output must show
EXPECT = {
    "bench_data.py": "speed-up (torchvision / in-memory)",
    "bench_deploy.py": "int8 / fp32",
    "bench_detect_scenes.py": "agrees",
    "bench_latency.py": "ONNX Runtime",
    "bench_loss.py": "ratio bias/ce",
    "bench_optimizer.py": "fused / loop",
    "bench_start.py": "| python -m biasloss --version |",
    "bench_train_epoch.py": "ratio (this / ref, medians)",
    "bench_voc_map.py": "exact area",
    "device_check.py": "all checks passed",
}
#: the scripts that write a JSON record (where, relative to tmp_path); each must name the code's git state
RECORDS = {"bench_deploy.py": "out.json", "bench_detect_scenes.py": "run/result.json", "bench_latency.py": "out.json",
           "device_check.py": "check/device_check.json"}


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
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], check=False, cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_every_benchmark_has_a_tiny_run():
    assert SCRIPTS, BENCHMARKS
    own = {s for s in SCRIPTS if Path(__file__).with_name(f"test_{Path(s).stem}.py").is_file()}
    missing = set(SCRIPTS) - set(TINY) - own
    assert not missing, f"give {sorted(missing)} a tiny run here (TINY, EXPECT) or a test module of its own"
    assert set(TINY) == set(EXPECT) and set(TINY) <= set(SCRIPTS)


def test_help_of_every_script(tmp_path):
    proc = subprocess.run([sys.executable, "-c", HELP, str(BENCHMARKS), *SCRIPTS], check=False, cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
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
    if script == "device_check.py":
        _check_device_record(tmp_path, record)


def _check_device_record(tmp_path: Path, record: dict) -> None:
    """The dry run's device_check.json: its rows passed with eval = logged exactly (a CPU), and
    everything it wrote is under --out (the test runs it in tmp_path)."""
    assert record["finished"] and record["passed"] and record["failures"] == [], record["failures"]
    # one row (--rows fp16: the GradScaler's, the most checked); the others differ only in --amp
    assert [r["run"] for r in record["rows"]] == ["fp16"]
    assert all(r["status"] == "PASS" and r["eval_minus_logged"] == 0 for r in record["rows"]), record["rows"]
    assert record["top1_tolerance_points"] == 0 and record["gpu"] is None
    assert {"torch", "torchvision", "timm"} <= set(record["versions"]) and record["platform"]
    assert all(c["exit_code"] == 0 for c in record["children"]) and len(record["children"]) in (2, 3)
    if record["data_benchmark"] is not None:
        assert record["data_benchmark"]["ratio_min"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check"]
    assert sorted(p.name for p in (tmp_path / "check").iterdir()) == ["device_check.json", "logs", "runs"]
    log = (tmp_path / "check" / "logs" / "fp16.eval.log").read_text()
    assert "===== stdout =====" in log and "===== stderr =====" in log


# ---- device_check.py's helpers, without training ----

def _device_check():
    """benchmarks/device_check.py as a module."""
    if "device_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("device_check", BENCHMARKS / "device_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["device_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["device_check"]


#: a child that prints like ``biasloss eval --json`` among noise: stray lines on stdout (one that
#: starts like JSON but is not, one JSON list), warnings on stderr (one of them a JSON object)
NOISY = r"""
import json, sys
print("loading checkpoint ...")
print('{"top1": 99.0, "torn')
print(json.dumps({"top1": 91.23, "samples": 10000}))
print(json.dumps([1, 2]))
print("done")
sys.stderr.write("UserWarning: TypedStorage is deprecated\n")
sys.stderr.write('{"top1": 0.0}\n')
sys.stderr.write("Error: cpuinfo failed to parse /proc/cpuinfo\n")
sys.exit(int(sys.argv[1]))
"""


def test_device_check_reads_eval_json_from_stdout_only(tmp_path):
    dc = _device_check()
    proc = dc.run_logged([sys.executable, "-c", NOISY, "0"], tmp_path / "logs" / "eval.log")
    assert proc.returncode == 0 and proc.wall_s > 0
    assert dc.last_json_object(proc.stdout) == {"top1": 91.23, "samples": 10000}
    assert dc.last_json_object(proc.stderr) == {"top1": 0.0}  # what the old stdout+stderr parsing could take
    assert dc.last_json_object("no json here\n\n") is None and dc.last_json_object("") is None
    log = (tmp_path / "logs" / "eval.log").read_text()
    assert log.startswith("$ ") and "exit 0 after" in log
    stdout, stderr = log.split("===== stdout =====\n")[1].split("===== stderr =====\n")
    assert "91.23" in stdout and "TypedStorage" not in stdout
    assert "TypedStorage" in stderr and "91.23" not in stderr


def test_device_check_failure_names_the_last_stderr_line(tmp_path):
    dc = _device_check()
    proc = dc.run_logged([sys.executable, "-c", NOISY, "3"], tmp_path / "x.log")
    assert dc.failure("eval fp16", proc) == "eval fp16: exit 3: Error: cpuinfo failed to parse /proc/cpuinfo"
    quiet = dc.Proc(1, "only stdout\n", "", 0.1)
    assert dc.failure("train fp32", quiet) == "train fp32: exit 1: only stdout"
    assert dc.failure("train fp32", dc.Proc(1, "a\nlast\n\n", "  \n", 0.1)) == "train fp32: exit 1: last"


def test_device_check_top1_tolerance_exact_on_cpu_a_tenth_of_a_point_on_cuda():
    dc = _device_check()
    assert dc.CUDA_TOP1_TOLERANCE == 0.1
    assert dc.top1_tolerance("cpu") == 0 and dc.top1_tolerance("cuda") == dc.top1_tolerance("cuda:1") == 0.1
    # values as train and eval write them: percentages of 10,000 images, rounded to 4 decimals
    assert dc.top1_agrees(85.43, 85.43, "cpu")
    assert not dc.top1_agrees(85.44, 85.43, "cpu")  # one image of 10,000
    assert not dc.top1_agrees(85.4301, 85.43, "cpu")
    assert dc.top1_agrees(85.44, 85.43, "cuda") and dc.top1_agrees(85.42, 85.43, "cuda:0")
    for k in range(-10, 11):  # up to 10 images either way, whatever the float error of the difference
        assert dc.top1_agrees(round(100 * (8543 + k) / 10000, 4), 85.43, "cuda"), k
    assert not dc.top1_agrees(85.54, 85.43, "cuda") and not dc.top1_agrees(85.32, 85.43, "cuda")  # 11 images


def test_device_check_rows():
    dc = _device_check()
    assert list(dc.variants("cpu", False)) == ["fp32", "bf16", "fp16", "compile"]
    cuda = dc.variants("cuda", False)
    assert list(cuda) == ["fp32", "bf16", "fp16", "compile", "compile-ro"]
    assert cuda["compile-ro"] == ["--amp", "off", "--compile", "--compile-mode", "reduce-overhead"]
    assert list(dc.variants("cuda", True)) == list(dc.variants("cpu", True)) == ["fp32", "bf16", "fp16"]


def test_device_check_children_environment(tmp_path, monkeypatch):
    dc = _device_check()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["elsewhere", str(dc.SRC)]))
    monkeypatch.setenv("BIASLOSS_DATA", "data")
    env = dc.child_env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(dc.SRC), "elsewhere"]  # this checkout first, once
    assert env["BIASLOSS_DATA"] == str(tmp_path / "data")


def test_device_check_last_metrics_skips_torn_lines(tmp_path):
    dc = _device_check()
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_top1": 80.5, "time_s": 3.0}\nwarning: not json\n'
                                            '{"epoch": 2, "val_top1": 81.25}\n{"epoch": 3, "val_to')
    assert dc.last_metrics(tmp_path) == {"epoch": 2, "val_top1": 81.25}
    assert dc.last_metrics(tmp_path / "missing") is None


def test_device_check_refuses_an_out_that_holds_a_check(tmp_path, capsys):
    (tmp_path / "runs" / "fp32").mkdir(parents=True)
    assert _device_check().main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "already holds a check" in capsys.readouterr().err
