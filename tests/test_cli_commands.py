"""One way to add a command, and a light start.

Every subcommand is a line of :data:`biasloss.cli.COMMANDS` (name -> module, help line) and a
``register(subparsers)`` in that module; the module is imported only when its command is parsed.
So ``biasloss --help`` / ``--version`` and ``import biasloss`` import neither torch nor timm,
yet ``timm.create_model("skipblocknet_m")`` and the CIFAR zoo work right after ``import biasloss``.
The light start is checked by what a fresh interpreter holds in ``sys.modules`` at exit, not by
timing it (``benchmarks/bench_start.py`` does that).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import types

import pytest

import biasloss.cli as cli
from biasloss.cli import COMMANDS, build_parser, main, parse_args

#: never imported to list the commands or print the version
HEAVY = ("torch", "timm", "torchvision", "numpy", "biasloss.models", "biasloss.train", "biasloss.analysis",
         "biasloss.detection", "biasloss.losses", "biasloss.data", "biasloss.features", "biasloss.export")


#: runs ``python -m biasloss <argv>`` as ``-m`` does, then writes ``sys.modules`` at exit to ``argv[1]``
AS_MAIN = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["biasloss", *sys.argv[2:]]
runpy.run_module("biasloss", run_name="__main__", alter_sys=True)
"""


def _imported(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``python -m biasloss *argv`` in a fresh interpreter: the process and the modules it imported."""
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", AS_MAIN, str(out), *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    return proc, set(json.loads(out.read_text()))


def _heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []], ids=["--version", "--help", "no command"])
def test_the_command_line_starts_without_the_heavy_modules(argv, tmp_path):
    proc, names = _imported(tmp_path, *argv)
    assert proc.returncode == (2 if not argv else 0), proc.stderr[-2000:]
    assert {"biasloss", "biasloss.cli"} <= names  # the check sees the imports
    assert _heavy(names) == []
    if argv == ["--version"]:
        assert proc.stdout.startswith("biasloss ")
    else:
        assert all(f"    {name} " in proc.stdout or f"    {name}\n" in proc.stdout for name in COMMANDS)


def test_import_biasloss_is_light_and_registers_the_models_with_timm():
    code = ("import sys, biasloss\n"
            "assert 'timm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
            "import timm\n"
            "assert type(timm.create_model('skipblocknet_xs', num_classes=10)).__name__ == 'SkipblockNet'\n"
            "assert type(timm.create_model('cifar_resnet18', num_classes=100)).__name__ == 'CifarResNet'\n"
            "assert 'cifar_resnet18' in timm.list_models('cifar_*') and timm.is_model('skipblocknet_m')\n"
            "assert type(sys.modules['timm'].__loader__).__name__ == 'SourceFileLoader'  # timm's own\n"
            "assert biasloss.BiasLoss is sys.modules['biasloss.losses'].BiasLoss\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_timm_imported_first_registers_at_import_biasloss():
    code = ("import timm, biasloss\n"
            "assert timm.is_model('skipblocknet_m') and timm.is_model('cifar_resnet18')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_lazy_names_of_the_package():
    import biasloss

    assert biasloss.FeatureTap is importlib.import_module("biasloss.features").FeatureTap
    assert biasloss.models is importlib.import_module("biasloss.models")
    assert {"BiasLoss", "FocalLoss", "losses", "models", "__version__"} <= set(dir(biasloss))
    assert set(biasloss.__all__) <= set(dir(biasloss))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        biasloss.nothing  # noqa: B018


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------


def test_every_command_module_registers_its_command_alone():
    for name, (module_name, text) in COMMANDS.items():
        assert text and "\n" not in text, name
        build_parser(name)  # the module adds its command, and no help line of its own (else TypeError)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_of_each_command(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: biasloss {name} ")


def test_the_top_level_help_lists_the_table_in_order(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    places = [out.index(f"\n    {name}") for name in COMMANDS]
    assert places == sorted(places)
    assert all(text.split()[0] in out for _, text in COMMANDS.values())


def test_only_the_command_given_is_built(monkeypatch):
    monkeypatch.delitem(sys.modules, "biasloss.export_cli", raising=False)
    imported = []
    real = importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append(name) or real(name))
    args = parse_args(["eval", "--checkpoint", "x.pt", "--json"])
    assert (args.command, args.checkpoint, args.json) == ("eval", "x.pt", True) and callable(args.func)
    assert imported == [COMMANDS["eval"][0]]
    assert "biasloss.export_cli" not in sys.modules


def _fake(monkeypatch, name: str, register) -> None:
    module = types.ModuleType(f"biasloss_fake_{name}")
    module.register = register
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(COMMANDS, name, (module.__name__, "a fake command"))


def test_a_missing_command_module_is_an_error(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "ghost", ("biasloss.no_such_module", "a command whose module is missing"))
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "a command whose module is missing" in capsys.readouterr().out  # listing needs no import
    with pytest.raises(ModuleNotFoundError, match="biasloss.no_such_module"):
        main(["ghost"])


def test_a_register_that_breaks_the_scheme_is_an_error(monkeypatch):
    _fake(monkeypatch, "quiet", lambda sub: None)
    with pytest.raises(RuntimeError, match="did not add the 'quiet' command"):
        parse_args(["quiet"])
    _fake(monkeypatch, "helpful", lambda sub: sub.add_parser("helpful", help="its own help line"))
    with pytest.raises(TypeError, match="COMMANDS"):
        parse_args(["helpful"])
    _fake(monkeypatch, "other", lambda sub: sub.add_parser("not-listed"))
    with pytest.raises(ValueError, match="'not-listed' is not in biasloss.cli.COMMANDS"):
        parse_args(["other"])


def test_a_command_module_runs_its_command(monkeypatch):
    def register(sub):
        p = sub.add_parser("fake")
        p.add_argument("--n", type=int, default=1)
        p.set_defaults(func=lambda args: 40 + args.n)

    _fake(monkeypatch, "fake", register)
    assert main(["fake", "--n", "2"]) == 42


def test_reproduce_without_a_grid_names_the_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reproduce"])
    assert stop.value.code == 2
    assert "required: {table4,table3,grid,ablation}" in capsys.readouterr().err
