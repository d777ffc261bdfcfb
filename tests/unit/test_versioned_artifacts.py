"""Versioned artifact folders (workspace.publish_version / live_dir / read_live): a reader sees one whole version."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_experts.errors import CheckpointError, MissingArtifactError
from moe_experts.workspace import CURRENT, KEEP_VERSIONS, live_dir, publish_version, read_live


def _publish(folder: Path, text: str, **kw) -> Path:
    with publish_version(folder, **kw) as new:
        (new.tmp / "a.txt").write_text(text)
        (new.tmp / "b.txt").write_text(text)
    return new.path


def _read(live: Path) -> str:
    a, b = (live / "a.txt").read_text(), (live / "b.txt").read_text()
    assert a == b  # the two files of one version
    return a


def test_a_folder_without_current_is_read_in_place_then_replaced_by_versions(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "notes.md"):
        (folder / name).write_text("old")
    (folder / ".tmp-x-1").write_text("someone else's temporary")
    assert live_dir(folder) == folder and read_live(folder, _read, what="it", hint="h") == "old"
    path = _publish(folder, "new")  # unversioned=None: every plain file of the old layout goes
    assert live_dir(folder) == path and (folder / CURRENT).read_text().strip() == path.name
    assert {p.name for p in folder.iterdir()} == {CURRENT, path.name, ".tmp-x-1"}
    assert read_live(folder, _read, what="it", hint="h") == "new"


def test_named_unversioned_files_only_are_removed(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "a.txt").write_text("old")
    (folder / "keep.md").write_text("mine")
    _publish(folder, "new", unversioned=("a.txt",))
    assert (folder / "keep.md").exists() and not (folder / "a.txt").exists()


def test_old_versions_are_pruned_and_a_failed_save_publishes_nothing(tmp_path):
    folder = tmp_path / "art"
    paths = [_publish(folder, str(i)) for i in range(4)]
    assert sorted(p for p in folder.iterdir() if p.name.startswith("v-")) == paths[-KEEP_VERSIONS:]
    with pytest.raises(RuntimeError):
        with publish_version(folder) as new:
            (new.tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert not new.tmp.exists() and not new.path.exists() and live_dir(folder) == paths[-1]
    assert sorted(p.name for p in folder.iterdir()) == sorted([CURRENT, *(p.name for p in paths[-KEEP_VERSIONS:])])


def test_a_resolved_version_stays_whole_while_the_next_is_published(tmp_path):
    folder = tmp_path / "art"
    _publish(folder, "1")
    resolved = live_dir(folder)  # what a reader holds
    _publish(folder, "2")
    assert _read(resolved) == "1" and _read(live_dir(folder)) == "2"


def test_a_reader_whose_version_is_pruned_reads_the_new_one(tmp_path):
    folder = tmp_path / "art"
    _publish(folder, "1")
    seen = []

    def read(live: Path) -> str:
        seen.append(live.name)
        if len(seen) == 1:  # two saves land while the first read is under way: its version is pruned
            _publish(folder, "2")
            _publish(folder, "3")
            return _read(live)  # FileNotFoundError
        return _read(live)

    assert read_live(folder, read, what="it", hint="h") == "3"
    assert len(seen) == 2 and seen[1] == live_dir(folder).name


def test_a_missing_file_with_no_new_version_is_a_checkpoint_error(tmp_path):
    folder = tmp_path / "art"
    path = _publish(folder, "1")
    (path / "b.txt").unlink()
    with pytest.raises(CheckpointError, match=r"cannot read the thing in .*v-") as refused:
        read_live(folder, _read, what="the thing", hint="rebuild it")
    assert refused.value.hint == "rebuild it"

    def nothing(live: Path) -> str:
        raise MissingArtifactError(f"nothing in {live}")

    with pytest.raises(MissingArtifactError):
        read_live(tmp_path / "none", nothing, what="it", hint="h")


def test_a_corrupted_pointer_is_refused(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / CURRENT).write_text("../elsewhere\n")
    with pytest.raises(CheckpointError, match="CURRENT is corrupted") as refused:
        live_dir(folder, hint="retrain it")
    assert refused.value.hint == "retrain it"


def test_any_error_while_a_new_version_goes_live_is_read_again_from_it(tmp_path):
    folder = tmp_path / "art"
    _publish(folder, "v1")
    calls: list[str] = []

    def read(live: Path) -> str:
        calls.append(_read(live))
        if len(calls) == 1:  # a save publishes (and prunes) while this reader is half-way, and the library fails
            for n in range(KEEP_VERSIONS + 1):
                _publish(folder, f"v{n + 2}")
            raise TypeError("expected str, bytes or os.PathLike object, not NoneType")
        return calls[-1]

    assert read_live(folder, read, what="it", hint="h") == f"v{KEEP_VERSIONS + 2}" and len(calls) == 2

    def broken(live: Path) -> str:  # the same error with no new version: a real bug, raised as it is
        raise TypeError("a real bug")

    with pytest.raises(TypeError, match="a real bug"):
        read_live(folder, broken, what="it", hint="h")
