"""bench/replay's host side: what it refuses before it boots a VM."""
import os

import pytest

from bench.replay import cli as replay

BUILT = ["agentd/_bin/agentd", "agentd/_bpf/lifecycle.bpf.o", "agentd/_bpf/memwatch.bpf.o",
         "agentd/_bpf/scx_agentd.bpf.o"]


def _tree(root, files):
    for f in files:
        path = root / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A repository tree at tmp_path, with the launcher and the BPF objects looked up there."""
    from bench.replay import runner
    monkeypatch.setattr(replay, "REPO", str(tmp_path))
    monkeypatch.setattr(runner, "LAUNCHER", str(tmp_path / BUILT[0]))
    monkeypatch.setenv("AGENTD_BPF_DIR", str(tmp_path / "agentd" / "_bpf"))
    return tmp_path


def test_missing_builds_names_each_compiled_part_a_tree_lacks(tree):
    assert replay.missing_builds() == [os.path.normpath(f) for f in BUILT]
    _tree(tree, BUILT[:2])
    assert replay.missing_builds() == [os.path.normpath(f) for f in BUILT[2:]]
    _tree(tree, BUILT)
    assert replay.missing_builds() == []


def test_the_agentd_mode_is_refused_before_the_vm_when_the_build_is_missing(tree, monkeypatch):
    # A fresh worktree has no build outputs: the agentd mode would time the fallbacks.
    monkeypatch.setattr(replay, "RUNS_DIR", str(tree / "runs"))
    monkeypatch.setattr(replay, "load_folder", lambda path: [])
    monkeypatch.setattr(replay, "boot_in_vm", lambda *a, **k: pytest.fail("booted"))
    with pytest.raises(SystemExit, match=r"agentd/_bin/agentd.*missing.*python3 -m agentd\._build"):
        replay.host_main(replay.parse_args(["--traces", str(tree), "--mode", "agentd"]))
    assert not (tree / "runs").exists()        # nothing started, nothing written


def test_modes_without_agentd_need_no_build(tree, monkeypatch):
    tmp_path = tree
    monkeypatch.setattr(replay, "load_folder", lambda path: [])
    monkeypatch.setattr(replay, "boot_in_vm", lambda *a, **k: pytest.fail("booted"))
    # Past the build check: stopped at the next step instead (no runs folder allowed).
    monkeypatch.setattr(replay, "RUNS_DIR", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        replay.host_main(replay.parse_args(["--traces", str(tmp_path), "--mode", "none,static"]))


def test_an_unknown_mode_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(replay, "load_folder", lambda path: [])
    with pytest.raises(SystemExit, match="unknown mode.*fast"):
        replay.host_main(replay.parse_args(["--traces", str(tmp_path), "--mode", "fast"]))
