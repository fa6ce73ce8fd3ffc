"""``biasloss._provenance``: the git commit and dirty flag every record stores, and the environment."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from biasloss._provenance import environment, git_state


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("no git")

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    return tmp_path


def test_git_state_of_a_checkout(repo):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_state(repo) == {"commit": head, "dirty": False}
    (repo / "new.txt").write_text("untracked files do not count\n")
    assert git_state(repo / "a.txt") == {"commit": head, "dirty": False}  # a file: its folder's checkout
    (repo / "a.txt").write_text("changed\n")
    assert git_state(repo) == {"commit": head, "dirty": True}


def test_git_state_unknown_is_none_never_an_error(tmp_path, monkeypatch):
    unknown = {"commit": None, "dirty": None}
    assert git_state(tmp_path / "missing") == unknown
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=False, capture_output=True)
    assert git_state(tmp_path) == unknown  # a repository without a commit
    monkeypatch.setenv("PATH", "")  # no git at all
    assert git_state() == unknown


def test_environment_has_what_records_store():
    import torch

    env = environment()
    assert set(env) == {"versions", "machine", "git"}
    assert set(env["versions"]) == {"biasloss", "torch", "python"} and env["versions"]["torch"] == torch.__version__
    assert set(env["machine"]) == {"cpu", "logical_cpus", "threads", "cpu_capability"}
    assert env["machine"]["cpu"] and env["machine"]["threads"] == torch.get_num_threads()
    commit = env["git"]["commit"]  # the tests run in a checkout (a commit) or an unpacked tree (None)
    assert commit is None or (len(commit) == 40 and isinstance(env["git"]["dirty"], bool))
