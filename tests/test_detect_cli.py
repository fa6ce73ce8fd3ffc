"""``biasloss detect``'s flags (one name per idea, a help for each, one ``--device``), and the typed
settings of a run (:class:`~biasloss.detection.settings.DetectConfig`), which checkpoints of today's
format keep loading into."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from biasloss.cli import build_parser
from biasloss.detection.settings import OPTIONS, DetectConfig
from biasloss.detection.train import DATASETS, _resolve, detector_from_checkpoint
from biasloss.train.checkpoint import save_checkpoint
from biasloss.train.settings import DEVICE_HELP

FIXTURE = Path(__file__).parent / "fixtures" / "detect" / "scenes-ssdlite.json"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _detect(action: str) -> argparse.ArgumentParser:
    return _subparsers(_subparsers(build_parser("detect"))["detect"])[action]


@pytest.mark.parametrize("action", ["train", "eval", "show"])
def test_every_flag_has_a_help(action):
    missing = [a.option_strings for a in _detect(action)._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())]
    assert not missing, f"detect {action}: flags without a help: {missing}"


def test_train_help_states_the_default_image_sizes(capsys):
    with pytest.raises(SystemExit):
        build_parser("detect").parse_args(["detect", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{DATASETS['voc']['size']} for VOC and {DATASETS['scenes']['size']} for the scenes" in text
    assert DATASETS["scenes"]["size"] == 224  # the size the scenes' runs of docs/detection.md train at
    assert "--image-size" in text and "--size" not in text.replace("--image-size", "")


@pytest.mark.parametrize("argv", [["detect", "train"], ["detect", "make-scenes", "--out", "x"]])
def test_size_is_a_hidden_alias_of_image_size(argv):
    parser = build_parser("detect")
    assert parser.parse_args([*argv, "--size", "96"]).size == 96
    assert parser.parse_args([*argv, "--image-size", "80"]).size == 80
    assert parser.parse_args(argv).size is None


def _device_actions() -> dict[str, argparse.Action]:
    found = {}
    for command, path in (("train", ()), ("eval", ()), ("variance", ()), ("profile", ()), ("export", ()),
                          ("detect", ("train",)), ("detect", ("eval",)), ("detect", ("show",)),
                          ("plot", ("samples",))):
        parser = _subparsers(build_parser(command))[command]
        for name in path:
            parser = _subparsers(parser)[name]
        (action,) = [a for a in parser._actions if "--device" in a.option_strings]
        found[" ".join((command, *path))] = action
    return found


def test_one_device_flag_one_default():
    actions = _device_actions()
    wrong = {name: a.help for name, a in actions.items() if not a.help.startswith(DEVICE_HELP)}
    assert not wrong, f"--device help not {DEVICE_HELP!r}: {wrong}"
    defaults = {name: a.default for name, a in actions.items()}
    assert set(defaults.values()) == {None}, defaults  # resolved by resolve_device: CUDA, else the CPU
    assert "exported on the CPU" in actions["export"].help


def _fixture_checkpoint(path: Path, args: dict | None = None) -> Path:
    from test_saved_run import _rebuild

    description = json.loads(FIXTURE.read_text())
    if args is not None:
        description["args"] = args
    save_checkpoint(_rebuild(description, torch.Generator().manual_seed(0)), path)
    return path


def test_a_checkpoint_of_todays_format_loads_into_a_detect_config(tmp_path):
    """The fixture is a 'detect train' checkpoint (tensors described by shape) of the version before
    DetectConfig: its args are a plain dict, and a DetectConfig writes back exactly that dict."""
    saved = json.loads(FIXTURE.read_text())["args"]
    model, cfg = detector_from_checkpoint(str(_fixture_checkpoint(tmp_path / "last.pt")))
    assert isinstance(cfg, DetectConfig) and not model.training
    assert (cfg.dataset, cfg.model, cfg.head, cfg.size, cfg.batch_size) == ("scenes", "skipblocknet_xs", "ssdlite",
                                                                            64, 2)
    assert cfg.to_checkpoint() == saved and set(saved) == set(OPTIONS)
    assert [f.name for f in dataclasses.fields(DetectConfig) if f.name not in OPTIONS] == ["out", "resume", "device"]
    # a resume resolves to the same settings, and saves them as they were
    args = argparse.Namespace(**{k: None for k in OPTIONS}, resume=str(tmp_path / "last.pt"), out=None, device="cpu")
    resumed = _resolve(args, {"args": saved})
    assert resumed.to_checkpoint() == saved and resumed.out == str(tmp_path) and resumed.device == "cpu"


def test_an_older_checkpoint_gets_the_defaults_of_what_it_did_not_record():
    saved = json.loads(FIXTURE.read_text())["args"]
    older = {k: v for k, v in saved.items() if k != "head"} | {"removed_option": 1}
    cfg = DetectConfig.from_checkpoint(older)
    assert cfg.head == "ssd"  # checkpoints written before the heads were recorded had SSD's
    assert not hasattr(cfg, "removed_option")
