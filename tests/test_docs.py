"""Every Python block in the README and docs/ runs, in order per document as a reader runs them
(later blocks use the imports of earlier ones), with the inputs and files they assume."""

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


def _shell_blocks(text: str) -> list[str]:
    """The fenced blocks of ``text`` marked bash, sh or console (or unmarked)."""
    blocks, lines, lang = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if lines is None:
                lines, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash", "sh", "console"):
                    blocks.append("\n".join(lines))
                lines = None
        elif lines is not None:
            lines.append(line)
    return blocks


def _documented_commands() -> list:
    """Every ``biasloss ...`` command of a shell block in the README and docs/, as argv (comments
    and line continuations removed; ``python -m biasloss``, ``torchrun ... -m biasloss`` and
    ``.venv/bin/biasloss`` count too)."""
    import shlex

    commands = []
    for doc in DOCS:
        for block in _shell_blocks(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:
                    continue
                starts = [i for i, w in enumerate(words) if w.endswith("biasloss")
                          and (i == 0 or words[i - 1] == "-m" or w.endswith("/biasloss"))]
                if not starts or "$(" in line or "|" in words:
                    continue
                argv = words[starts[0] + 1:]
                if argv and not argv[0].startswith("-"):
                    commands.append(pytest.param(argv, id=f"{doc.name}: {' '.join(argv)[:70]}"))
    return commands


@pytest.mark.parametrize("argv", _documented_commands())
def test_documented_commands_parse(argv):
    # every flag a document gives exists, with values of the right kind (the command is not run)
    from biasloss.cli import parse_args

    parse_args(argv)
