"""Every Python block in the README and docs/ runs, in order per document as a reader runs them
(later blocks use the imports of earlier ones), with the inputs and files they assume; every shell
command they show runs here (RUN) or is listed with the reason it does not (NOT_RUN), and each
``biasloss`` command of both parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _docs():
    return [pytest.param(doc, id=str(doc.relative_to(ROOT))) for doc in DOCS if "```python" in doc.read_text()]


def _files_the_docs_name(tmp_path: Path) -> None:
    """The weights files the snippets load, written in the formats they stand for."""
    import biasloss.models as bm

    torch.manual_seed(0)
    torch.save(bm.to_official_state_dict(bm.skipblocknet_m()), tmp_path / "skipblocknet-m.pth")
    run = tmp_path / "runs" / "imagenet-skipblocknet_s-bias-s0"
    run.mkdir(parents=True)
    torch.save(bm.skipblocknet_s().state_dict(), run / "best.pt")


@pytest.mark.parametrize("doc", _docs())
def test_python_blocks_run(doc, tmp_path, monkeypatch):
    _files_the_docs_name(tmp_path)
    monkeypatch.chdir(tmp_path)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 160.0]])
    namespace = {
        "x": torch.randn(2, 3, 224, 224),
        "images": [torch.rand(3, 300, 300), torch.rand(3, 240, 320)],
        "targets": [{"boxes": boxes, "labels": torch.tensor([3])}] * 2,
    }
    text = doc.read_text()
    for match in BLOCK.finditer(text):
        line = text[: match.start()].count("\n") + 2
        code = compile("\n" * (line - 1) + match.group(1), str(doc), "exec")  # tracebacks point into the doc
        exec(code, namespace)


def test_the_feature_taps_docs_name_are_the_models():
    import biasloss.models as bm

    text = (ROOT / "docs" / "skipblocknet.md").read_text()
    sentence = re.search(r"`model\.feature_info` \(timm\) lists (.*?):", text, re.S).group(1)
    named = re.findall(r"`([\w.]+)`", sentence)
    assert named == [info["module"] for info in bm.skipblocknet_m().feature_info]


# ---------------------------------------------------------------------------------------------
# Shell commands: each one the README and docs/ show is run here (RUN) or listed, with the reason,
# in NOT_RUN; every biasloss command of either set parses
# ---------------------------------------------------------------------------------------------

PROGRAMS = ("biasloss", "python", "python3", "torchrun", "make")


def _program_words(command: str) -> list[str]:
    """``command`` as words, the leading ``VAR=value`` assignments dropped."""
    import shlex

    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    return words


def _is_command(text: str) -> bool:
    try:
        words = _program_words(text)
    except ValueError:  # prose with an apostrophe
        return False
    return bool(words) and (words[0] in PROGRAMS or words[0].endswith("/biasloss"))


def _program_words_kept(command: str) -> list[str]:
    """``command`` without its comment, as words (quoting kept, so that it runs as written)."""
    import shlex

    lexer = shlex.shlex(command, posix=False, punctuation_chars=False)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return list(lexer)


def _commands_of(text: str) -> list[str]:
    """The shell commands of a document, whitespace collapsed: every line of its bash/sh blocks
    (continuations joined, comments dropped), the ``$ `` lines of its console and unmarked blocks
    and any of their lines that starts with a program, and the code spans of a table's "command"
    column that start with one."""
    commands = []
    block, lang, column = None, None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None:
                block, lang = [], line[3:].strip()
                continue
            joined = "\n".join(block).replace("\\\n", " ").splitlines()
            for entry in joined:
                if lang in ("bash", "sh"):
                    if _program_words(entry):
                        commands.append(entry)
                elif lang in ("", "console"):
                    if entry.startswith("$ "):
                        commands.append(entry[2:])
                    elif _is_command(entry):
                        commands.append(entry)
            block = None
        elif block is not None:
            block.append(line)
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if "command" in cells:
                column = cells.index("command")
            elif column is not None and len(cells) > column and not set(cells[column]) <= set("-: "):
                commands += [span for span in re.findall(r"`([^`]+)`", cells[column]) if _is_command(span)]
        else:
            column = None
    return [" ".join(_program_words_kept(c)) for c in commands]


def _all_commands() -> dict[str, list[str]]:
    """command -> the documents that give it, for every documented command."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for command in _commands_of(doc.read_text()):
            found.setdefault(command, []).append(str(doc.relative_to(ROOT)))
    return found


# Run here, each in a fresh temporary directory (its working directory, and where `~/` points), and
# must exit 0: every documented command that takes seconds and needs nothing a fresh clone lacks
# (Fashion-MNIST is installed by `make`).
RUN = [
    ('python -c "import timm, biasloss.models.cifar as z; [print(n, sum(p.numel() for p in '
     'timm.create_model(n).parameters())) for n in z.MODEL_NAMES]"'),
    "biasloss detect make-scenes --out DIR --train 400 --val 50 --test 100 --image-size 96 --seed 1 --data-dir ~/data",
    "biasloss train --dataset digits --lr 0.05 --print-config > run.yaml",
    "biasloss profile skipblocknet_xs skipblocknet_s skipblocknet_m skipblocknet_l --compare --no-latency",
    "biasloss plot weights --out weights.png",
    "biasloss plot loss --out loss.png",
]

_TRAIN = "trains for minutes to days"
_NEEDS_RUN = "needs the checkpoint of a training run (minutes to days) that a fresh clone lacks"
_GRID = "a grid of training runs: hours on the CPU"
# Parse-only (biasloss's own parser checks every flag and value): each with why it is not run.
NOT_RUN = {
    "make train": "sets up the venv and trains for 7-10 min",
    "make test": "the test suite itself",
    "biasloss train": _TRAIN,
    "biasloss train --loss ce --out runs/ce": _TRAIN,
    "biasloss train --config run.yaml --seed 1 --out runs/digits-s1": "trains (5 epochs of digits): beyond this file's budget",
    "biasloss train --dataset cifar100 --data-dir ~/data --model cifar_shufflenetv2 --recipe cifar100-authors":
        "CIFAR-100 is not here; 200 epochs",
    "biasloss train --model torchvision.resnet18 --loss focal": _TRAIN,
    "biasloss train --resume runs/ce/last.pt": _NEEDS_RUN,
    "biasloss train --dataset food101 --data-dir ~/data --init runs/imagenet-skipblocknet_s-bias-s0/best.pt":
        "Food-101 and an ImageNet checkpoint are not here",
    "biasloss eval --checkpoint runs/ce/best.pt --json": _NEEDS_RUN,
    "biasloss export --checkpoint runs/ce/best.pt --out model.onnx": _NEEDS_RUN,
    "torchrun --nproc_per_node 4 -m biasloss train --dataset imagenet --data-dir /data/imagenet --recipe imagenet":
        "ImageNet is not here; 4 processes, days",
    "biasloss detect make-scenes --out ~/data/scenes": "12,000 scenes: minutes",
    "biasloss detect make-scenes --out ~/data/fmnist-scenes": "12,000 scenes: minutes",
    "torchrun --nproc-per-node 2 -m biasloss detect train --dataset scenes --data-dir ~/data/scenes --batch-size 8 "
    "--out runs/scenes-ssd": "trains the detector: hours, 2 processes",
    "biasloss detect eval --checkpoint runs/scenes-ssd/last.pt": _NEEDS_RUN,
    "biasloss detect eval --checkpoint runs/scenes-ssd/last.pt --test-set val": _NEEDS_RUN,
    "biasloss detect show --checkpoint runs/scenes-ssd/last.pt --out scenes.png": _NEEDS_RUN,
    "biasloss detect train --data-dir ~/data --init runs/imagenet-skipblocknet_s-bias-s0/best.pt":
        "PASCAL VOC and an ImageNet checkpoint are not here",
    "biasloss detect eval --checkpoint runs/voc-ssd-skipblocknet_s-s0/best.pt": _NEEDS_RUN,
    "biasloss export --checkpoint runs/x/best.pt --out model.onnx --int8": _NEEDS_RUN,
    "biasloss export --checkpoint runs/x/best.pt --out model.pte --int8": _NEEDS_RUN,
    "python benchmarks/bench_detect_scenes.py --data /tmp/scenes --out runs/scenes-scratch --nproc 2 -- "
    "--batch-size 8": "trains the detector twice: hours",
    "python benchmarks/bench_detect_scenes.py --data /tmp/scenes --out runs/scenes-init --nproc 2 --init "
    "runs/fashion-mnist-skipblocknet_xs-bias-s0/last.pt -- --batch-size 8": "trains the detector: hours",
    "python benchmarks/bench_latency.py --rounds 400": "a latency benchmark: minutes",
    "python benchmarks/bench_latency.py --runtime onnx --rounds 300 --breakdown": "a latency benchmark: minutes",
    "python benchmarks/bench_latency.py": "a latency benchmark: minutes",
    "biasloss profile skipblocknet_m torchvision.mobilenet_v3_large --compare": "times latency and throughput: 40 s",
    "biasloss reproduce table3 --data-dir /data/imagenet --out results/table3": "ImageNet is not here; " + _GRID,
    "biasloss reproduce table4 --data-dir ~/data --out results/table4": "CIFAR-100 is not here; " + _GRID,
    "biasloss reproduce grid --dataset fashion-mnist --models skipblocknet_xs --epochs 3 --seeds 0 1 2 "
    "--out results/fmnist": _GRID,
    "OMP_NUM_THREADS=1 biasloss reproduce ablation --dataset fashion-mnist --models skipblocknet_xs --seeds 0 1 2 3 4 "
    "--epochs 5 --limit 3000 --variants ce-x-c rank running_min --variance --no-progress --device cpu "
    "--out docs/results/evidence-skipblocknet_xs": _GRID,
    "OMP_NUM_THREADS=1 biasloss reproduce ablation --dataset fashion-mnist --models cifar_shufflenetv2_x0_5 --seeds 0 1 "
    "2 3 4 --epochs 5 --limit 3000 --variants ce-x-c rank running_min --variance --no-progress --device cpu "
    "--out docs/results/evidence-cifar_shufflenetv2_x0_5": _GRID,
    "OMP_NUM_THREADS=1 biasloss reproduce ablation --dataset fashion-mnist --models cifar_shufflenetv2_x0_5 --seeds 0 1 "
    "2 3 4 --epochs 12 --limit 3000 --variants ce-x-c rank running_min --variance --no-progress --device cpu "
    "--out docs/results/evidence-cifar_shufflenetv2_x0_5-12ep": _GRID,
    "biasloss reproduce grid --dataset fashion-mnist --models mobilenetv3_small_050 --losses ce focal bias --seeds 0 1 "
    "2 3 4 --epochs 8 --no-progress --device cpu --variance --out docs/results/fmnist-mobilenetv3_small_050": _GRID,
    "OMP_NUM_THREADS=1 biasloss reproduce grid --dataset fashion-mnist --models lcnet_035 --losses ce focal bias "
    "--seeds 0 1 2 3 4 --epochs 8 --no-progress --device cpu --variance --out docs/results/fmnist-lcnet_035": _GRID,
    "OMP_NUM_THREADS=1 biasloss reproduce ablation --dataset fashion-mnist --models lcnet_035 --seeds 0 1 2 --epochs 8 "
    "--no-progress --device cpu --baseline docs/results/fmnist-lcnet_035 --out docs/results/ablations-lcnet_035":
        _GRID + "; its --baseline runs are not in a clone",
    "OMP_NUM_THREADS=1 biasloss reproduce-check docs/results/evidence-cifar_shufflenetv2_x0_5/ce-x-c/records/"
    "cifar_shufflenetv2_x0_5-ce-s1.json": "re-trains a record's 5 epochs: minutes; the record is not in a clone",
    "biasloss reproduce-check docs/results/<grid>/records/<run>.json [--epochs N]":
        "a template (<grid>, <run>, [--epochs N]); re-trains a record: minutes",
    "biasloss plot samples --checkpoint docs/results/fmnist-mobilenetv3_small_050/runs/mobilenetv3_small_050-bias-s0/"
    "last.pt --out docs/results/figures/fmnist-mobilenetv3_small_050-bias-s0-samples.png --hist docs/results/figures/"
    "fmnist-mobilenetv3_small_050-bias-s0-weights.png": _NEEDS_RUN,
    "biasloss plot samples --checkpoint docs/results/fmnist-lcnet_035/runs/lcnet_035-bias-s0/last.pt --out "
    "docs/results/figures/fmnist-lcnet_035-bias-s0-samples.png --hist docs/results/figures/"
    "fmnist-lcnet_035-bias-s0-weights.png": _NEEDS_RUN,
    "biasloss plot samples --checkpoint runs/.../last.pt --out samples.png --hist weights.png":
        "a template (runs/...); " + _NEEDS_RUN,
    "biasloss variance --checkpoint runs/.../best.pt --hist variance.png": "a template (runs/...); " + _NEEDS_RUN,
    "biasloss plot tradeoff --results results.json --out tradeoff.png":
        "needs the results.json of profile and eval runs that a fresh clone lacks",
    "biasloss plot curves runs/a runs/b --out curves.svg": "needs two training runs' metrics.jsonl",
}


def test_every_documented_command_is_run_or_says_why_not():
    documented = _all_commands()
    assert len(RUN) == len(set(RUN)) and not set(RUN) & set(NOT_RUN)
    unclassified = {c: where for c, where in documented.items() if c not in RUN and c not in NOT_RUN}
    assert not unclassified, f"add each to RUN (if it takes seconds) or NOT_RUN (with why not): {unclassified}"
    stale = (set(RUN) | set(NOT_RUN)) - set(documented)
    assert not stale, f"no document gives these any more: {stale}"


def _argv(command: str, home: Path) -> tuple[list[str], dict[str, str], str | None]:
    """``command`` as a subprocess argv (biasloss and python: this interpreter, ``~/`` is ``home``),
    its environment and the file its output is redirected to (``> FILE``), if any."""
    import os
    import shlex
    import sys

    words = shlex.split(command)
    stdout = words[words.index(">") + 1] if ">" in words else None
    words = words[:words.index(">")] if ">" in words else words
    env = dict(os.environ, MPLBACKEND="Agg")
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    words = [str(home) + w[1:] if w.startswith("~/") else w for w in words]
    program = {"biasloss": [sys.executable, "-m", "biasloss"], "python": [sys.executable]}[words[0]]
    return program + words[1:], env, stdout


@pytest.mark.parametrize("command", RUN, ids=[c[:60] for c in RUN])
def test_documented_command_runs(command, tmp_path, monkeypatch, capsys):
    """A ``biasloss`` command runs in this process, through the console script's ``main`` (torch is
    imported once for all); any other program as a subprocess."""
    import contextlib
    import subprocess

    from biasloss.cli import main

    argv, env, stdout = _argv(command, tmp_path)
    if argv[1:3] == ["-m", "biasloss"]:
        monkeypatch.chdir(tmp_path)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        code = main(argv[3:])
        out, err = capsys.readouterr()
        if stdout:
            (tmp_path / stdout).write_text(out)
        assert code == 0, f"{command}\nexit {code}\n{out[-2000:]}\n{err[-4000:]}"
        return
    with open(tmp_path / stdout, "w") if stdout else contextlib.nullcontext(subprocess.PIPE) as out:
        done = subprocess.run(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.PIPE, text=True, timeout=300,
                              check=False)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{(done.stdout or '')[-2000:]}\n{done.stderr[-4000:]}"


def _biasloss_argv(command: str) -> list[str] | None:
    """The arguments after ``biasloss`` (also ``python -m biasloss``, ``torchrun ... -m biasloss``);
    ``None`` for another program. A template's optional ``[--flag VALUE]`` is left out."""
    words = _program_words(re.sub(r"\s*\[[^\]]*\]|\s*>.*", "", command))  # nor a redirection
    starts = [i for i, w in enumerate(words) if w == "biasloss" and (i == 0 or words[i - 1] == "-m")
              or w.endswith("/biasloss")]
    return words[starts[0] + 1:] if starts else None


@pytest.mark.parametrize("command", [c for c in [*RUN, *NOT_RUN] if _biasloss_argv(c) is not None],
                         ids=lambda c: c[:70])
def test_documented_commands_parse(command):
    # every flag a document gives exists, with values of the right kind
    from biasloss.cli import parse_args

    parse_args(_biasloss_argv(command))
