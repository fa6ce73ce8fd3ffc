"""Careless and hostile input (issue 13), by class: every bad flag, file or place is refused with
exit code 2, one line naming the culprit, no traceback, and every file that was there before the
command byte-identical after it. (Runs mixed or lost through ``--out``/``--resume``, a second
writer and a kill: ``tests/test_run_safety.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from biasloss.cli import main

pytest.importorskip("sklearn")


def _snapshot(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for root in roots if root.exists()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def refused(capsys, argv: list[str], *needles: str, watch: tuple[Path, ...] = ()) -> str:
    """Run the CLI with ``argv``: exit code 2, one ``biasloss: error:`` line holding every needle,
    no traceback, and the files under ``watch`` unchanged (none added, none altered)."""
    before = _snapshot(*watch)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert len(err.splitlines()) == 1 and err.startswith("biasloss: error: ") and "Traceback" not in err, (argv, err)
    for needle in needles:
        assert needle in err, (argv, needle, err)
    assert _snapshot(*watch) == before, argv
    return err

FAST = ["--dataset", "digits", "--model", "skipblocknet_xs", "--batch-size", "32", "--limit", "64",
        "--no-progress", "--device", "cpu", "--epochs", "1"]

# (subcommand argv, the flag the one-line error must name)
BAD_NUMBERS = [
    (["train", *FAST, "--weight-decay", "-1"], "--weight-decay"),
    (["train", *FAST, "--weight-decay", "nan"], "--weight-decay"),
    (["train", *FAST, "--lr", "inf"], "--lr"),
    (["train", *FAST, "--lr", "nan"], "--lr"),
    (["train", *FAST, "--lr", "0"], "--lr"),
    (["detect", "train", "--data-dir", "x", "--lr", "nan"], "--lr"),
    (["detect", "train", "--data-dir", "x", "--weight-decay", "-1"], "--weight-decay"),
    (["detect", "train", "--data-dir", "x", "--limit", "0"], "--limit"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_NUMBERS, ids=[" ".join(a[-3:]) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_before_any_work(argv, flag, tmp_path, capsys):
    refused(capsys, [*argv, "--out", str(tmp_path / "run")], flag, watch=(tmp_path,))
    assert not (tmp_path / "run").exists()


BAD_DEVICES = [["train", *FAST], ["eval", "--checkpoint", "x.pt"], ["variance", "--model", "skipblocknet_xs"],
               ["profile", "skipblocknet_xs"], ["detect", "train", "--data-dir", "x"]]


@pytest.mark.parametrize("argv", BAD_DEVICES, ids=[a[0] if a[0] != "detect" else "detect" for a in BAD_DEVICES])
@pytest.mark.parametrize("device", ["foo", "cuda:99"])
def test_a_device_that_is_not_there_is_named(argv, device, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "run")] if argv[0] in ("train", "detect") else []
    refused(capsys, [*argv, *extra, "--device", device], "--device", device, watch=(tmp_path,))
    assert not (tmp_path / "run").exists()


def _outs(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    return {"is a file": tmp_path / "afile", "parent is a file": tmp_path / "afile" / "run",
            "read-only": ro / "run"}


@pytest.mark.parametrize("case", ["is a file", "parent is a file", "read-only"])
def test_an_output_place_that_cannot_be_written_is_named_before_any_work(case, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    out = _outs(tmp_path)[case]
    if case == "read-only":  # as a read-only file system answers (root would write a 0o555 directory)
        real = tempfile.TemporaryFile

        def read_only(*args, **kwargs):
            if str(kwargs.get("dir", "")).startswith(str(tmp_path / "readonly")):
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, **kwargs)

        monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    for argv in (["train", *FAST, "--out", str(out)],
                 ["reproduce", "grid", "--dataset", "digits", "--models", "skipblocknet_xs", "--epochs", "1",
                  "--limit", "64", "--seeds", "0", "--losses", "ce", "--out", str(out)],
                 ["plot", "weights", "--out", str(out / "fig.png")]):
        refused(capsys, argv, "--out", watch=(tmp_path,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"  # planned for 2 epochs, stopped after 1: resumable
    assert main(["train", *FAST, "--epochs", "2", "--stop-after", "1", "--out", str(out)]) == 0
    return out / "last.pt"


@pytest.mark.parametrize("args", [{}, {"dataset": "digits"}, {"model": "skipblocknet_xs"}, {"dataset": 3, "model": None}],
                         ids=["empty", "no-model", "no-dataset", "wrong-types"])
def test_a_checkpoint_whose_arguments_lack_keys_is_named(trained, args, tmp_path, capsys):
    from biasloss.train.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(trained)
    state["args"] = args
    bad = tmp_path / "bad.pt"
    save_checkpoint(state, bad)
    for argv in (["eval", "--checkpoint", str(bad), "--device", "cpu"],
                 ["export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")],
                 ["variance", "--checkpoint", str(bad), "--device", "cpu"]):
        refused(capsys, argv, "bad.pt", watch=(tmp_path, trained.parent))


def test_a_checkpoint_with_only_dataset_and_model_still_evaluates(trained, tmp_path, capsys):
    from biasloss.train.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(trained)
    state["args"] = {"dataset": "digits", "model": "skipblocknet_xs", "limit": 64}  # an older checkpoint's few keys
    save_checkpoint(state, tmp_path / "old.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "old.pt"), "--device", "cpu", "--no-progress"]) == 0


def test_an_input_size_the_model_cannot_take_is_named(trained, tmp_path, capsys):
    cases = [(["export", "--checkpoint", str(trained), "--image-size", "1", "--out", str(tmp_path / "m.onnx")],
              "--image-size"),
             # SqueezeNet's pooling cannot reduce a 4 px map; it runs at 224 px, so the size is to blame
             (["profile", "cifar_squeezenet", "--input-size", "4", "--device", "cpu", "--reps", "1"], "--input-size"),
             # 3 x 200,000 x 200,000 floats: 480 GB
             (["profile", "skipblocknet_xs", "--input-size", "200000", "--device", "cpu", "--reps", "1"], "memory")]
    for argv, needle in cases:
        refused(capsys, argv, needle, watch=(tmp_path, trained.parent))
    assert not (tmp_path / "m.onnx").exists()


def test_detect_eval_of_a_classifier_checkpoint_is_one_line(trained, capsys):
    refused(capsys, ["detect", "eval", "--checkpoint", str(trained), "--data-dir", "x", "--device", "cpu"],
            "biasloss eval", str(trained), watch=(trained.parent,))


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_previous_file(trained, tmp_path, monkeypatch, capsys):
    import errno
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained.parent, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # every write reaches the disk through fsync, which now fails
    refused(capsys, ["train", "--resume", str(run / "last.pt"), "--out", str(run), "--no-progress"],
            "cannot write", "No space left", "intact", watch=(tmp_path,))
    for argv in (["export", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "m.pt")],
                 ["plot", "weights", "--out", str(tmp_path / "w.png")]):
        refused(capsys, argv, "cannot write", "No space left", watch=(tmp_path,))
    monkeypatch.setattr(os, "fsync", real)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before


def test_an_unreadable_image_in_a_folder_dataset_is_named(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (i * 40, 100, 50)).save(d / f"{i}.JPEG")
    (root / "train" / "n02" / "2.JPEG").write_bytes(b"\\xff\\xd8\\xff\\xe0 truncated")
    refused(capsys, ["train", "--dataset", "imagenet", "--data-dir", str(root), "--model", "skipblocknet_xs",
                     "--epochs", "1", "--batch-size", "4", "--workers", "1", "--no-progress", "--device", "cpu",
                     "--out", str(tmp_path / "run")], "2.JPEG", "cannot be read as an image", "wrote", watch=(root,))
    # the run stopped after its last whole step, with a checkpoint there to resume from
    from biasloss.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) in ((0, 0), (0, 1))


def test_an_export_cleans_the_temporary_file_an_aborted_export_left(trained, tmp_path):
    stale = tmp_path / ".m.pt.k2j3h4.tmp"  # what an export aborted in C++ (full disk) leaves
    stale.write_bytes(b"partial")
    assert main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "m.pt")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("text", ["https://x/skipblocknet-m.pth\n", "hello\n", "}\n", "\x80\x02]q\x00h\x05.\n"])
def test_a_text_file_given_as_checkpoint_or_weights_is_one_line(text, tmp_path, capsys):
    bad = tmp_path / "u.pt"
    bad.write_text(text, encoding="latin-1")
    refused(capsys, ["eval", "--checkpoint", str(bad), "--device", "cpu"], "u.pt", watch=(tmp_path,))
    refused(capsys, ["train", *FAST, "--init", str(bad), "--out", str(tmp_path / "run")], "u.pt", watch=(tmp_path,))


def test_a_resume_of_a_checkpoint_with_an_unknown_loss_or_a_bad_recipe_is_one_line(trained, tmp_path, capsys):
    import torch

    from biasloss.train.checkpoint import load_checkpoint

    for name, change in (("loss.pt", lambda c: c["args"].update(loss="nope")),
                         ("recipe.pt", lambda c: c.update(recipe="fashion-mnist"))):
        ckpt = load_checkpoint(trained)
        change(ckpt)
        run = tmp_path / name.removesuffix(".pt")
        run.mkdir()
        torch.save(ckpt, run / "last.pt")
        err = refused(capsys, ["train", "--resume", str(run / "last.pt"), "--no-progress", "--device", "cpu"],
                      str(run / "last.pt"), watch=(tmp_path,))
        assert ("'nope'" in err) if name == "loss.pt" else ("'recipe' is a str" in err), err


def test_eval_of_a_run_directory_names_its_checkpoints(trained, capsys):
    refused(capsys, ["eval", "--checkpoint", str(trained.parent), "--device", "cpu"],
            "is a directory", str(trained.parent / "best.pt"))


# ---------------------------------------------------------------------------------------------
# Issue 26, second round (points 16 to 19)
# ---------------------------------------------------------------------------------------------


def _voc(tmp_path: Path) -> list[str]:
    """``detect train`` flags of a tiny VOC tree under ``tmp_path/data``, on the CPU."""
    from conftest import write_voc

    root = write_voc(tmp_path / "data")
    return ["detect", "train", "--data-dir", str(root), "--train-set", "train", "--test-year", "2012",
            "--test-set", "val", "--model", "skipblocknet_xs", "--batch-size", "2", "--workers", "0",
            "--epochs", "1", "--device", "cpu", "--no-progress"]


def test_a_detector_size_too_small_or_too_large_is_named_and_leaves_no_run(tmp_path, capsys):
    """Issue 26, 16 and 18b: --size 1 trained and reported a mAP (every feature map one pixel);
    --size 200000 ended in a failed allocation's traceback, after opening the run directory."""
    detect = _voc(tmp_path)
    for size, needles in (("1", ("--size", "at least 32")), ("16", ("--size", "at least 32")),
                          ("200000", ("--size 200000", "memory"))):
        refused(capsys, [*detect, "--size", size, "--out", str(tmp_path / "run")], *needles, watch=(tmp_path,))
        assert not (tmp_path / "run").exists(), size  # nor a directory holding only a stale .lock
    from biasloss.models.detection import ssd_skipblocknet

    with pytest.raises(ValueError, match="at least 32"):
        ssd_skipblocknet("skipblocknet_xs", size=16)


def test_a_run_that_fails_before_writing_leaves_no_trace(tmp_path, capsys):
    """Issue 26, 17: the .lock a failed run created goes, and the directory when the run made it;
    never what was there before."""
    bad = tmp_path / "u.pt"
    bad.write_text("hello\n")
    argv = ["train", *FAST, "--init", str(bad)]  # refused after the run directory is opened
    refused(capsys, [*argv, "--out", str(tmp_path / "new" / "run")], "u.pt")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    refused(capsys, [*argv, "--out", str(kept)], "u.pt")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    (kept / ".lock").write_text("")  # a lock it did not create stays
    refused(capsys, [*argv, "--out", str(kept)], "u.pt")
    assert sorted(p.name for p in kept.iterdir()) == [".lock", "notes.txt"]


def _cifar100(root: Path, train_labels: list, test_labels: list) -> Path:
    """``root/cifar-100-python/{train,test}`` with the given labels, random images."""
    import pickle

    import numpy as np

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, labels in (("train", train_labels), ("test", test_labels)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                         "fine_labels": labels, "coarse_labels": [0] * len(labels)}, f)
    return folder


CIFAR = ["--dataset", "cifar100", "--model", "skipblocknet_xs", "--batch-size", "4", "--epochs", "1",
         "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_cifar_split_is_named(split, tmp_path, capsys):
    """Issue 26, 18a: an empty test split trained and logged val_top1 0.0, val_loss 0.0."""
    labels = {"train": [1, 2, 3, 4, 5, 6, 7, 8], "test": [1, 2, 3, 4]}
    labels[split] = []
    folder = _cifar100(tmp_path / "data", labels["train"], labels["test"])
    refused(capsys, ["train", *CIFAR, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
            f"{split} split is empty", str(folder / split), watch=(tmp_path,))
    assert not (tmp_path / "run").exists()


def test_an_evaluation_over_no_sample_is_refused_not_zero():
    """Issue 26, 18a: evaluate() over nothing returned loss 0.0 and top-1 0.0."""
    import torch

    from biasloss.train.engine import evaluate

    with pytest.raises(ValueError, match="no samples"):
        evaluate(torch.nn.Linear(2, 2), None, [], device=torch.device("cpu"))


@pytest.mark.parametrize("bad", [1.5, True, "cat", None], ids=["float", "bool", "str", "none"])
def test_cifar_labels_that_are_not_integers_are_named(bad, tmp_path, capsys):
    """Issue 26, 18d and 19: 1.5 and True were taken as classes, a string gave numpy's ufunc message."""
    folder = _cifar100(tmp_path / "data", [1, 2, 3, bad, 5, 6, 7, 8], [1, 2, 3, 4])
    refused(capsys, ["train", *CIFAR, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
            str(folder / "train"), "integer class numbers", watch=(tmp_path,))
    # arrays too: np.asarray makes [1, 2.0] floats and [True, 1] ints
    import pickle

    import numpy as np

    from biasloss.data import DatasetCorruptError, load_arrays

    _cifar100(tmp_path / "arrays", [1, 2], [1, 2])
    for labels in (np.array([1.0, 2.0]), np.array([True, False]), [1, 2.0]):
        with open(tmp_path / "arrays" / "cifar-100-python" / "test", "wb") as f:
            pickle.dump({"data": np.zeros((2, 3072), np.uint8), "fine_labels": labels}, f)
        with pytest.raises(DatasetCorruptError, match="integer class numbers"):
            load_arrays("cifar100", tmp_path / "arrays")


def test_init_with_resume_is_refused(tmp_path, capsys):
    """Issue 26, 18e: --init given with --resume was silently ignored."""
    for argv in (["train", *FAST, "--init", "w.pt", "--resume", "r/last.pt"],
                 ["detect", "train", "--data-dir", "x", "--init", "w.pt", "--resume", "r/last.pt"]):
        refused(capsys, argv, "--init w.pt", "--resume r/last.pt", watch=(tmp_path,))


def test_detect_show_writes_the_format_its_suffix_names(tmp_path, capsys):
    """Issue 26, 18c: --out x.pdf held PNG bytes."""
    run = tmp_path / "run"
    assert main([*_voc(tmp_path), "--size", "64", "--out", str(run)]) == 0
    show = ["detect", "show", "--checkpoint", str(run / "last.pt"), "--images", "1", "--device", "cpu"]
    for name, magic in (("x.pdf", b"%PDF"), ("x.jpg", b"\xff\xd8"), ("x.png", b"\x89PNG")):
        assert main([*show, "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(magic), name
    for name in ("x.svg", "x"):
        refused(capsys, [*show, "--out", str(tmp_path / name)], "--out", watch=(tmp_path,))


@pytest.mark.parametrize("line", ['{"epoch": 1, "train_loss": 1.0, "val_top1": NaN}',
                                  '{"epoch": 1, "train_loss": 1.0, "val_top1": Infinity}',
                                  '{"epoch": 1, "train_loss": 1.0, "val_top1": "12.5"}',
                                  '{"epoch": 1, "train_loss": 1.0, "val_top1": null}'],
                         ids=["nan", "inf", "str", "null"])
def test_a_metrics_line_with_a_number_that_is_not_one_is_refused_with_its_line(line, trained, tmp_path, capsys):
    """Issue 26, 18f: NaN or garbage in metrics.jsonl flowed into reproduce's tables as nan / +nan."""
    import shutil

    from biasloss.analysis.reproduce import read_record, read_run
    from biasloss.train.loop import read_metrics

    run = tmp_path / "run"
    shutil.copytree(trained.parent, run)
    log = run / "metrics.jsonl"
    log.write_text(f"not json, skipped as a torn line\n{line}\n")
    for read in (lambda: read_metrics(log), lambda: read_run(run, 1)):
        with pytest.raises(ValueError, match=r"metrics\.jsonl line 2: 'val_top1'"):
            read()
    refused(capsys, ["plot", "curves", str(run), "--out", str(tmp_path / "c.png")], f"{log} line 2",
            watch=(tmp_path,))
    # a record (what a published grid keeps) is held to the same rule
    record = tmp_path / "r.json"
    record.write_text('{"identity": {}, "final_top1": NaN, "final_top5": null, "best_top1": 1.0, "metrics": []}')
    with pytest.raises(ValueError, match="r.json: 'final_top1'"):
        read_record(record)
    record.write_text('{"identity": {}, "final_top1": 1.0, "final_top5": null, "best_top1": 1.0, "metrics": ['
                      + line + "]}")
    with pytest.raises(ValueError, match=r"r.json: metrics\[0\]: 'val_top1'"):
        read_record(record)


def test_a_file_that_is_not_utf8_is_named(trained, tmp_path, capsys):
    """Issue 26, 19: every reader of a user-given text or JSON file names it on a decode error."""
    import shutil

    from biasloss.analysis.reproduce import read_record, read_run

    latin = "{\"name\": \"caf\xe9\"}\n".encode("latin-1")
    results = tmp_path / "results.json"
    results.write_bytes(latin)
    refused(capsys, ["plot", "tradeoff", "--results", str(results), "--out", str(tmp_path / "t.png")],
            str(results), watch=(tmp_path,))
    refused(capsys, ["reproduce-check", str(results)], str(results), watch=(tmp_path,))
    with pytest.raises(ValueError, match="results.json"):
        read_record(results)
    run = tmp_path / "run"
    shutil.copytree(trained.parent, run)
    (run / "metrics.jsonl").write_bytes(latin)
    with pytest.raises(ValueError, match="metrics.jsonl"):
        read_run(run, 1)
    refused(capsys, ["plot", "curves", str(run), "--out", str(tmp_path / "c.png")], str(run / "metrics.jsonl"),
            watch=(tmp_path,))


def test_a_bad_hist_suffix_names_hist_not_out(tmp_path, capsys):
    """plot samples --hist x.txt said "--out must end in ..." of the --hist file."""
    refused(capsys, ["plot", "samples", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "s.png"),
                     "--hist", str(tmp_path / "h.txt")], "--hist must end in", watch=(tmp_path,))
