"""The one atomic write (bit_tf.training.atomic): a target holds a whole result or what it held
before, never a part; a full or read-only disk is one error naming the target."""

import errno
import os

import pytest

from bit_tf.training.atomic import (
    TargetExistsError,
    atomic_path,
    write_bytes,
    write_text,
    write_through,
)
from bit_tf.training.file_errors import FileWriteError


def test_text_and_bytes_are_written_whole_with_nothing_left_beside_them(tmp_path):
    path = tmp_path / "deep" / "progress.json"
    assert write_text(str(path), '{"step": 1}') == str(path)
    assert write_bytes(str(path), b'{"step": 2}') == str(path)  # replaced
    assert path.read_text() == '{"step": 2}'
    assert os.listdir(path.parent) == ["progress.json"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "last.keras"
    path.write_text("old")
    seen = []

    def write(temporary):
        seen.append(temporary)
        with open(temporary, "w") as file:
            file.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_through(str(path), write, suffix=".keras")
    assert seen[0].endswith(".keras") and os.path.dirname(seen[0]) == str(tmp_path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["last.keras"]


def test_a_full_disk_is_one_error_naming_the_target(tmp_path):
    path = tmp_path / "model.npz"

    def write(temporary):
        open(temporary, "w").close()
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FileWriteError, match="model.npz.*no space is left") as caught:
        write_through(str(path), write)
    assert "partial file was removed" in str(caught.value)
    assert not os.listdir(tmp_path)


def test_a_folder_is_renamed_whole_and_an_existing_target_is_refused(tmp_path):
    target = tmp_path / "module"
    with atomic_path(str(target)) as temporary:
        os.makedirs(os.path.join(temporary, "variables"))
        with open(os.path.join(temporary, "variables", "data"), "wb") as file:
            file.write(b"weights")
    assert (target / "variables" / "data").read_bytes() == b"weights"
    with pytest.raises(TargetExistsError, match="already exists"):
        with atomic_path(str(target), what="Export folder"):
            pass
    with atomic_path(str(target), overwrite=True) as temporary:
        os.makedirs(temporary)
    assert not os.listdir(target)
    assert os.listdir(tmp_path) == ["module"]


def test_a_write_beside_another_writers_folder_does_not_read_into_it(tmp_path, monkeypatch):
    # Another writer's files beside the target (a checkpoint folder being written and removed by
    # a second worker) are not ours to flush: a socket there cannot even be opened, and a file
    # removed between listing and opening it must not fail this write.
    import socket

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind("ckpt/worker.sock")  # relative: socket paths are limited to 108 bytes
        assert write_text(str(tmp_path / "worker0.json"), "{}") == str(tmp_path / "worker0.json")
        assert (tmp_path / "worker0.json").read_text() == "{}"
    finally:
        listener.close()
