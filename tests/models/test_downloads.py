"""Downloads from a real HTTP server on 127.0.0.1: keyed by the whole URL, cached only when whole
and readable, recorded and checked on every use, timed out when they stall, stopped by Ctrl-C."""

import logging
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from loopback_server import serve

from bit_tf.models.download import DownloadError, cache_path, download, recorded_sha256, sha256_of
from bit_tf.models.weights import HEAD_BIAS, read_checkpoint

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home / "models" / "bit_tf"


@pytest.fixture()
def bucket(official_checkpoint, tmp_path):
    """A folder of files to serve: the fixture checkpoint, and a Keras model under a .npz name."""
    folder = tmp_path / "bucket"
    folder.mkdir()
    shutil.copyfile(official_checkpoint, folder / "r14.npz")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.save(folder / "model.keras")
    os.rename(folder / "model.keras", folder / "renamed.npz")
    return folder


@pytest.fixture()
def server(bucket):
    with serve(bucket) as url:
        yield url


def cached_files(keras_home) -> list[str]:
    """Every file in the cache, relative to it (folders left out)."""
    found = []
    for folder, _, files in os.walk(keras_home):
        found += [os.path.relpath(os.path.join(folder, name), keras_home) for name in files]
    return sorted(found)


def test_two_urls_ending_in_the_same_file_name_are_two_files(
    official_checkpoint, tmp_path, keras_home
):
    # Two hosts, each with its own w.npz: the same backbone, heads of other values.
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b" / "x"
    host_b.mkdir(parents=True)
    host_a.mkdir()
    arrays = dict(read_checkpoint(official_checkpoint))
    np.savez(host_a / "w.npz", **arrays)
    np.savez(host_b / "w.npz", **{**arrays, HEAD_BIAS: arrays[HEAD_BIAS] + 1})
    with serve(host_a) as url_a, serve(tmp_path / "host-b") as url_b:
        first = download(f"{url_a}/w.npz")
        second = download(f"{url_b}/x/w.npz")
    assert first != second and os.path.basename(first) == os.path.basename(second) == "w.npz"
    assert first == cache_path(f"{url_a}/w.npz") and second == cache_path(f"{url_b}/x/w.npz")
    np.testing.assert_array_equal(
        read_checkpoint(second)[HEAD_BIAS], read_checkpoint(first)[HEAD_BIAS] + 1
    )
    assert len(cached_files(keras_home)) == 4  # each file and its sha256 record


@pytest.mark.parametrize(
    "route, message",
    [
        ("cut-no-length/r14.npz", "not a whole .npz archive"),
        ("html/r14.npz", "the server sent an HTML page .*, not a checkpoint"),
        ("html-octet/r14.npz", "the server sent an HTML page .*, not a checkpoint"),
        ("renamed.npz", r"the server sent a Keras model file \(.keras"),
    ],
)
def test_what_is_not_a_whole_checkpoint_is_named_and_not_cached(server, keras_home, route, message):
    with pytest.raises(DownloadError, match=message):
        download(f"{server}/{route}", retries=1, backoff_seconds=0.01)
    assert cached_files(keras_home) == []


def test_a_cut_download_is_retried_and_never_left_partial(server, keras_home):
    path = download(f"{server}/flaky/r14.npz", backoff_seconds=0.05)
    assert read_checkpoint(path)
    assert cached_files(keras_home) == sorted(
        os.path.relpath(name, keras_home) for name in (path, path + ".sha256")
    )


def test_a_wrong_sha256_caches_nothing(server, keras_home):
    with pytest.raises(DownloadError, match="sha256 is .* expected 00"):
        download(f"{server}/r14.npz", sha256="00" * 32)
    assert cached_files(keras_home) == []


def test_without_network_it_fails_at_once_and_says_what_to_do(keras_home):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="pass its local path instead"):
        download("http://does-not-exist.invalid/BiT-M-R50x1.npz")
    with pytest.raises(DownloadError, match="pass its local path instead"):
        download("http://127.0.0.1:9/BiT-M-R50x1.npz", retries=1, backoff_seconds=0.05)
    assert time.monotonic() - started < 20
    assert cached_files(keras_home) == []


def test_a_missing_file_is_not_retried(server, keras_home):
    started = time.monotonic()
    with pytest.raises(DownloadError, match="404"):
        download(f"{server}/BiT-S-R50x1.npz", backoff_seconds=5)
    assert time.monotonic() - started < 5


def test_a_trickling_server_fails_within_the_window_and_leaves_nothing(server, keras_home):
    # One byte every 0.2 s, with a window of 1 s: the rule that fails a server sending a byte
    # every 5 s under the defaults (64 KiB a minute), scaled down.
    started = time.monotonic()
    # The window is measured between bytes: "the last 1 s" or, on a busy machine, "2 s".
    with pytest.raises(DownloadError, match=r"it stalled: \d+ bytes in the last \d+ s"):
        download(f"{server}/trickle/r14.npz", stall_seconds=1.0, timeout=5.0)
    assert time.monotonic() - started < 10
    assert cached_files(keras_home) == []


def test_a_silent_server_times_out_and_is_retried(bucket, keras_home, caplog):
    with serve(bucket, trickle_seconds=30) as url:  # headers, then nothing for 30 s
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="bit_tf.models.download"):
            with pytest.raises(DownloadError, match="timed out"):
                download(f"{url}/trickle/r14.npz", timeout=0.5, retries=1, backoff_seconds=0.01)
    assert time.monotonic() - started < 5
    assert "retrying in" in caplog.text
    assert cached_files(keras_home) == []


def test_a_changed_file_is_named_downloaded_again_or_refused(server, bucket, keras_home, caplog):
    url = f"{server}/r14.npz"
    path = download(url)
    original = sha256_of(path)
    assert recorded_sha256(path) == original == sha256_of(bucket / "r14.npz")
    # The cached copy changes on disk (a damaged disk, an overwrite): named, downloaded again.
    with open(path, "r+b") as stream:
        stream.seek(1000)
        stream.write(b"\x00" * 64)
    with caplog.at_level(logging.WARNING, logger="bit_tf.models.download"):
        assert download(url) == path
    assert f"Cached {path} has changed since it was downloaded" in caplog.text
    assert sha256_of(path) == original
    # The server now sends other bytes under that URL: refused, the cached file left alone.
    np.savez(bucket / "r14.npz", **{**dict(read_checkpoint(path)), HEAD_BIAS: np.zeros(10)})
    os.remove(path)
    with pytest.raises(DownloadError, match="the file on the server has changed"):
        download(url)
    assert not os.path.exists(path) and recorded_sha256(path) == original


def test_a_cached_file_from_before_the_records_is_checked_then_used_or_fetched_again(
    server, bucket, keras_home, caplog
):
    unreachable = "http://127.0.0.1:9/r14.npz"  # nothing listens there: no download possible
    path = cache_path(unreachable)
    os.makedirs(os.path.dirname(path))
    shutil.copyfile(bucket / "r14.npz", path)  # whole: checked, recorded and used
    assert download(unreachable) == path
    assert recorded_sha256(path) == sha256_of(path)
    other = cache_path(f"{server}/flaky/r14.npz")
    os.makedirs(os.path.dirname(other))
    data = (bucket / "r14.npz").read_bytes()
    with open(other, "wb") as stream:
        stream.write(data[: len(data) // 2])  # cut short, as old versions could leave it
    with caplog.at_level(logging.WARNING, logger="bit_tf.models.download"):
        assert download(f"{server}/flaky/r14.npz", backoff_seconds=0.01) == other
    assert f"Cached {other} cannot be used" in caplog.text
    assert open(other, "rb").read() == data


# A download, then a wait between attempts, each stopped by SIGINT (Ctrl-C) in a real process.
INTERRUPTED = textwrap.dedent(
    """
    import signal
    import sys
    from bit_tf.models.download import download

    # Ctrl-C as in a terminal, also where this test runs with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    url = sys.argv[1]
    for phase, route, backoff in (("transfer", "trickle", 1), ("backoff", "unavailable", 60)):
        print(phase, flush=True)
        try:
            download(f"{url}/{route}/r14.npz", retries=3, backoff_seconds=backoff)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
)


def test_ctrl_c_stops_a_download_and_its_wait_at_once_and_removes_the_partial(server, keras_home):
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, server],
        cwd=REPOSITORY,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "transfer"
        deadline = time.monotonic() + 30
        while not any(".partial-" in name for name in cached_files(keras_home)):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        stopped = []
        for phase in ("transfer", "backoff"):
            if phase == "backoff":
                assert process.stdout.readline().strip() == "backoff"
                time.sleep(1.5)  # the 503 answer comes at once; then the 60 s wait
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
            assert process.stdout.readline().strip() == "interrupted", process.stderr.read()
            stopped.append(time.monotonic() - sent)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
    assert max(stopped) < 5, stopped  # seconds, a busy machine's reading of the reply included
    assert cached_files(keras_home) == []


def test_download_progress_is_drawn_on_a_terminal_only(server, keras_home, tmp_path):
    leader, follower = pty.openpty()
    with open(follower, "w") as terminal:
        path = download(f"{server}/r14.npz", progress_stream=terminal)
    shown = _read_everything_written(leader)
    size = os.path.getsize(path)
    assert f"r14.npz: {size / 2**20:.1f} MiB of {size / 2**20:.1f} MiB (100%)" in shown
    assert "/s, 0 s left" in shown
    os.remove(path)
    with open(tmp_path / "log.txt", "w") as log_file:
        download(f"{server}/r14.npz", progress_stream=log_file)
    assert (tmp_path / "log.txt").read_text() == ""


def _read_everything_written(leader: int) -> str:
    """What the download drew, up to its final newline.

    A pseudo-terminal passes writes on to its leader asynchronously, so one read can return
    only the first of them; this reads until the closing newline arrives (or 10 s pass).
    """
    chunks = b""
    deadline = time.monotonic() + 10
    while b"\n" not in chunks and time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunks += os.read(leader, 1 << 16)
            except OSError:  # EIO: the follower is closed and everything was read
                break
    os.close(leader)
    return chunks.decode()
