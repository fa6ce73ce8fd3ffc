"""CPU inference latency: SkipblockNet against torchvision's MobileNetV3-Large.

Batch 1, 224 px, one thread, the way the paper's Table 2 measures phones. Two runtimes:

* ``eager``: eager PyTorch (``torch.inference_mode``), channels-last by default;
* ``onnx``: each model exported with ``torch.onnx.export(dynamo=True)`` and run by ONNX Runtime
  on one thread with all graph optimisations, the way mobile users deploy.

The models run interleaved, one forward each per round, in an order that rotates every round, so
that load from other processes falls on all of them alike. Two clocks: ``wall`` (``perf_counter``,
the latency a user sees) and ``cpu`` (``thread_time``: the CPU time of the calling thread, which
does all the work with one thread in PyTorch and in ONNX Runtime, and which leaves out the time the
thread waits while other processes have the cores; the steadier figure on a shared machine).
Reported per model and clock: minimum and median; per pair: the ratio of minima, of medians and
the median of the per-round ratios. The machine, the load average and the command are printed
with the results.

    python benchmarks/bench_latency.py                      # eager and ONNX, 300 rounds
    python benchmarks/bench_latency.py --runtime eager --fuse both --rounds 500
    python benchmarks/bench_latency.py --json results.json
    python benchmarks/bench_latency.py --runtime onnx --breakdown   # where the ONNX time goes

``--fuse yes`` folds BatchNorm into the convolutions of *every* model (``biasloss.models.fuse_bn``
handles torchvision's Conv-BN-act blocks too), so the comparison stays fair. The ONNX exporter
folds BatchNorm by itself.

``--mallopt`` raises glibc's mmap and trim thresholds so freed activation buffers are reused
rather than handed back to the OS; on virtual machines the page faults of fresh buffers can cost
as much as the convolutions (all models pay them, but how many depends on each model's sequence
of allocations, so the eager ratio moves by a few per cent with glibc's trimming).

``--breakdown`` profiles each ONNX Runtime session (``SessionOptions.enable_profiling``) and
splits a model's kernel time into nodes that have a counterpart in the reference (same op,
input and output shapes: the MobileNetV3-Large layers SkipblockNet keeps) and nodes that do not
(the layers it adds), so the gap can be read off layer by layer.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List

import torch

from biasloss._provenance import environment
from biasloss.deploy import onnx_session

REFERENCE = "torchvision.mobilenet_v3_large"


def machine() -> Dict[str, object]:
    """The machine, the versions and the code (git commit, dirty tree) a result comes from: the
    library's :func:`biasloss._provenance.environment`, flattened, with the platform and the
    runtimes' versions."""
    env = environment()
    info: Dict[str, object] = {**env["machine"], **env["versions"], "platform": platform.platform(),
                               "git": env["git"]}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _mallopt() -> None:
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def _build(name: str) -> torch.nn.Module:
    from biasloss.models import create_model

    torch.manual_seed(0)
    return create_model(name, num_classes=1000).eval()


Times = Dict[str, Dict[str, List[float]]]  # model -> clock ("wall", "cpu") -> seconds per run


def interleave(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int) -> Times:
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: Times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            c0, t0 = time.thread_time(), time.perf_counter()
            fns[n]()
            t1, c1 = time.perf_counter(), time.thread_time()
            times[n]["wall"].append(t1 - t0)
            times[n]["cpu"].append(c1 - c0)
    return times


def _summary(times: Times, reference: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for clock in ("wall", "cpu"):
        ref = times[reference][clock]
        out[clock] = {}
        for n, by_clock in times.items():
            t = by_clock[clock]
            row = {"min_ms": min(t) * 1e3, "median_ms": statistics.median(t) * 1e3}
            if n != reference:
                row["ratio_min"] = min(t) / min(ref)
                row["ratio_median"] = statistics.median(t) / statistics.median(ref)
                row["ratio_paired_median"] = statistics.median(a / b for a, b in zip(t, ref))
            out[clock][n] = row
    return out


def _print(title: str, summary: Dict[str, Dict[str, Dict[str, float]]], reference: str) -> None:
    print(f"\n## {title}")
    print("| clock | model | min ms | median ms | min / ref | median / ref | paired median / ref |")
    print("|---|---|---|---|---|---|---|")
    for clock, rows in summary.items():
        for n, row in rows.items():
            if n == reference:
                print(f"| {clock} | {n} (ref) | {row['min_ms']:.2f} | {row['median_ms']:.2f} | | | |")
            else:
                print(
                    f"| {clock} | {n} | {row['min_ms']:.2f} | {row['median_ms']:.2f} | {row['ratio_min']:.3f} "
                    f"| {row['ratio_median']:.3f} | {row['ratio_paired_median']:.3f} |"
                )


def bench_eager(args: argparse.Namespace, fused: bool) -> Dict[str, Dict[str, Dict[str, float]]]:
    from biasloss.models import fuse_bn

    models = {n: _build(n) for n in args.models}
    if fused:
        models = {n: fuse_bn(copy.deepcopy(m)) for n, m in models.items()}
    x = torch.randn(args.batch, 3, args.size, args.size)
    if args.channels_last:
        models = {n: m.to(memory_format=torch.channels_last) for n, m in models.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fns = {n: (lambda m=m: m(x)) for n, m in models.items()}
        times = interleave(fns, args.rounds, args.warmup)
    return _summary(times, args.models[-1])


def _export_all(args: argparse.Namespace, x: torch.Tensor, tmp: str) -> Dict[str, str]:
    paths = {}
    for n in args.models:
        paths[n] = os.path.join(tmp, n.replace(".", "_") + ".onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_build(n), (x,), paths[n], dynamo=True, verbose=False)
    return paths


def bench_onnx(args: argparse.Namespace) -> Dict[str, object]:
    import numpy as np

    x = torch.randn(args.batch, 3, args.size, args.size)
    xn = np.ascontiguousarray(x.numpy())
    with tempfile.TemporaryDirectory() as tmp:
        paths = _export_all(args, x, tmp)
        sessions = {}
        for n, path in paths.items():
            sess = onnx_session(path, args.threads)
            sessions[n] = (sess, sess.get_inputs()[0].name)
        fns = {n: (lambda s=s, i=i: s.run(None, {i: xn})) for n, (s, i) in sessions.items()}
        times = interleave(fns, args.rounds, args.warmup)
        summary: Dict[str, object] = dict(_summary(times, args.models[-1]))
        if args.breakdown:
            summary["breakdown"] = _ort_breakdown(args, paths, xn, tmp)
    return summary


def _ort_node_times(sess, runs: int) -> List[tuple]:
    """(op, input shapes, output shapes, mean microseconds) per node, from a profiled session."""
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    def shapes(items: List[dict]) -> tuple:
        return tuple(tuple(v) for d in items for v in d.values())

    total: Dict[str, float] = {}
    key: Dict[str, tuple] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            a = e["args"]
            key[e["name"]] = (a["op_name"], shapes(a.get("input_type_shape", [])),
                              shapes(a.get("output_type_shape", [])))
            total[e["name"]] = total.get(e["name"], 0.0) + e["dur"]
    return [(*key[n], t / runs) for n, t in total.items()]


def _ort_breakdown(args: argparse.Namespace, paths: Dict[str, str], xn, tmp: str) -> Dict[str, Dict[str, float]]:
    """Kernel time per model, split into nodes matched in the reference's graph and the rest."""
    runs = max(50, args.rounds // 2)
    sessions = {n: onnx_session(p, args.threads, profile_prefix=os.path.join(tmp, f"prof{i}"))
                for i, (n, p) in enumerate(paths.items())}
    feeds = {n: {s.get_inputs()[0].name: xn} for n, s in sessions.items()}
    for _ in range(runs):  # interleaved, like the timings
        for n, sess in sessions.items():
            sess.run(None, feeds[n])
    nodes = {n: _ort_node_times(sess, runs) for n, sess in sessions.items()}
    ref = args.models[-1]
    out: Dict[str, Dict[str, float]] = {}
    for n, rows in nodes.items():
        pool: Dict[tuple, List[float]] = {}
        for op, ins, outs, t in nodes[ref]:
            pool.setdefault((op, ins, outs), []).append(t)
        matched = matched_ref = extra = 0.0
        extra_nodes: Dict[str, float] = {}
        for op, ins, outs, t in rows:
            twins = pool.get((op, ins, outs))
            if twins:
                matched += t
                matched_ref += twins.pop()
            else:
                extra += t
                extra_nodes[op] = extra_nodes.get(op, 0.0) + t
        ref_total = sum(r[-1] for r in nodes[ref])
        unmatched_ref = ref_total - matched_ref
        out[n] = {"total_us": sum(r[-1] for r in rows), "nodes": len(rows), "matched_us": matched,
                  "reference_us_for_matched": matched_ref, "own_us": extra, "reference_own_us": unmatched_ref,
                  **{f"own_us_{op}": v for op, v in sorted(extra_nodes.items())}}
    return out


def _print_breakdown(breakdown: Dict[str, Dict[str, float]], reference: str) -> None:
    print("\nONNX Runtime kernel time per run (profiled): nodes with a twin in the reference (same op and "
          "shapes) vs nodes without")
    print("| model | nodes | total us | matched us (reference's twins) | unmatched us | reference's unmatched us "
          "| unmatched by op |")
    print("|---|---|---|---|---|---|---|")
    for n, b in breakdown.items():
        if n == reference:
            continue
        ops = ", ".join(f"{k[len('own_us_'):]} {v:.0f}" for k, v in b.items() if k.startswith("own_us_"))
        print(f"| {n} | {b['nodes']:.0f} | {b['total_us']:.0f} | {b['matched_us']:.0f} "
              f"({b['reference_us_for_matched']:.0f}) | {b['own_us']:.0f} | {b['reference_own_us']:.0f} | {ops} |")
    b = breakdown[reference]
    print(f"| {reference} (ref) | {b['nodes']:.0f} | {b['total_us']:.0f} | | | | |")


def main(argv: List[str] | None = None) -> Dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["skipblocknet_m", REFERENCE],
                   help="model names for biasloss.models.create_model; the last is the reference")
    p.add_argument("--runtime", choices=["eager", "onnx", "all"], default="all")
    p.add_argument("--fuse", choices=["no", "yes", "both"], default="both",
                   help="eager: fold BatchNorm into convolutions (in every model)")
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mallopt", action="store_true", help="keep freed buffers (see module doc)")
    p.add_argument("--breakdown", action="store_true",
                   help="onnx: profile the sessions and split the time into shared and own layers")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.mallopt:
        _mallopt()
    result: Dict[str, object] = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": machine(),
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "channels_last": args.channels_last,
        "mallopt": args.mallopt,
        "rounds": args.rounds,
        "loadavg_before": loadavg(),
    }
    print("command:", result["command"])
    print("machine:", json.dumps(result["machine"]))
    print(f"threads {args.threads}, batch {args.batch}, {args.size} px, rounds {args.rounds}, "
          f"channels_last {args.channels_last}, mallopt {args.mallopt}; load average {result['loadavg_before']}")
    ref = args.models[-1]
    if args.runtime in ("eager", "all"):
        for fused in {"no": [False], "yes": [True], "both": [False, True]}[args.fuse]:
            key = "eager_fused" if fused else "eager"
            result[key] = bench_eager(args, fused)
            _print(f"eager PyTorch{' (BatchNorm fused in every model)' if fused else ''}", result[key], ref)
    if args.runtime in ("onnx", "all"):
        result["onnx"] = onnx = bench_onnx(args)
        breakdown = onnx.pop("breakdown", None)
        _print("ONNX Runtime (torch.onnx.export dynamo=True, ORT_ENABLE_ALL)", onnx, ref)  # type: ignore[arg-type]
        if breakdown is not None:
            result["onnx_breakdown"] = breakdown
            _print_breakdown(breakdown, ref)
    result["loadavg_after"] = loadavg()
    print(f"\nload average after: {result['loadavg_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
