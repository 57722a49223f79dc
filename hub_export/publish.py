"""Publishing modules in the compressed TF-Hub format, with a model card, atomically.

`publish` writes `<target>/<name>/<version>.tar.gz` (the module folder's contents at the
archive root: what `tensorflow_hub` downloads and unpacks for `http(s)://...tar.gz` and
`gs://...tar.gz` handles) and `<target>/<name>/<version>.md` (the model card). Any static web
server or bucket serving `<target>` then hosts the module:
`hub.load("https://host/bit/m-r50x1/1.tar.gz")`.

Example:
    >>> hub_export.publish("exports/bit_m-r50x1", "gs://my-bucket/hub", "bit/m-r50x1", 1)
    'gs://my-bucket/hub/bit/m-r50x1/1.tar.gz'
"""

from __future__ import annotations

import functools
import re
import tarfile

import tensorflow as tf

from bit_tf.training.atomic import atomic_path, join, refuse_existing, write_text, write_through
from hub_export.model_card import model_card
from hub_export.module import read_metadata

_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _check_name(name: str) -> list[str]:
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or not all(_NAME_PART.match(part) and part != ".." for part in parts):
        raise ValueError(
            f"Invalid module name {name!r}: use '/'-separated parts of letters, digits, '_', "
            "'-' and '.', not starting with '.' or '-', e.g. 'bit/m-r50x1'."
        )
    return parts


def _add_tree(archive: tarfile.TarFile, module_dir: str) -> int:
    """Adds the module folder's files at the archive root; returns the file count."""
    count = 0
    prefix = module_dir.rstrip("/")
    for folder, subfolders, files in sorted(tf.io.gfile.walk(module_dir)):
        relative_folder = folder[len(prefix) :].strip("/").replace("\\", "/")
        subfolders.sort()
        if relative_folder:
            info = tarfile.TarInfo(relative_folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            archive.addfile(info)
        for file_name in sorted(files):
            path = join(folder, file_name)
            info = tarfile.TarInfo(f"{relative_folder}/{file_name}".lstrip("/"))
            info.size, info.mode, info.mtime = tf.io.gfile.stat(path).length, 0o644, 0
            with tf.io.gfile.GFile(path, "rb") as stream:
                archive.addfile(info, stream)
            count += 1
    return count


def write_archive(module_dir: str, archive_path: str) -> str:
    """Writes the compressed TF-Hub format: a `.tar.gz` of the module folder's contents.

    The archive is written under a temporary sibling name and renamed onto `archive_path`
    when complete (`bit_tf.training.atomic`): `archive_path` never holds a cut archive.

    Example:
        >>> write_archive("exports/bit_m-r50x1", "/tmp/bit_m-r50x1.tar.gz")
        '/tmp/bit_m-r50x1.tar.gz'
    """
    _require_module(module_dir)
    return write_through(archive_path, functools.partial(_write_tar, module_dir))


def _require_module(module_dir: str) -> None:
    if not tf.io.gfile.exists(join(module_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"{module_dir!r} holds no saved_model.pb; pass the folder written by "
            "hub_export.export_module (or any TF2 SavedModel folder)."
        )


def _write_tar(module_dir: str, path: str) -> None:
    """Writes the `.tar.gz` of the module folder's contents straight to `path`."""
    with tf.io.gfile.GFile(path, "wb") as stream:
        with tarfile.open(fileobj=stream, mode="w|gz") as archive:
            _add_tree(archive, module_dir)


def publish(
    module_dir: str,
    target: str,
    name: str,
    version: int,
    overwrite: bool = False,
    upstream: str | None = None,
    license_name: str = "Apache-2.0",
    description: str | None = None,
) -> str:
    """Publishes a module as `<target>/<name>/<version>.tar.gz` plus a Markdown model card.

    Both files are written under temporary names and renamed when complete, the archive
    last: a publish killed half-way leaves no archive (and so no version) at the target.

    Args:
        module_dir: a module folder from `export_module` (local or gs://).
        target: a local folder or any `tf.io.gfile` URL, e.g. "gs://bucket/hub".
        name: the module's name, '/'-separated, e.g. "bit/m-r50x1".
        version: a positive integer.
        overwrite: replace an existing version (refused otherwise).
        upstream, license_name, description: model card contents (see `model_card`).

    Returns:
        The archive's path or URL.

    Raises:
        hub_export.TargetExistsError: the version exists and `overwrite` is False.

    Example:
        >>> publish("exports/bit_m-r50x1", "published", "bit/m-r50x1", 1)
        'published/bit/m-r50x1/1.tar.gz'
    """
    parts = _check_name(name)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}.")
    folder = join(target, *parts)
    archive_path = join(folder, f"{version}.tar.gz")
    card_path = join(folder, f"{version}.md")
    refuse_existing(archive_path, f"Published version {version} of {name!r}", overwrite)
    _require_module(module_dir)

    card = model_card(
        name,
        version,
        read_metadata(module_dir),
        upstream=upstream,
        license_name=license_name,
        description=description,
    )
    # The card may be left over from a killed publish of this version: replace it.
    write_text(card_path, card)
    what = f"Published version {version} of {name!r}"
    with atomic_path(archive_path, overwrite=overwrite, what=what) as temporary:
        _write_tar(module_dir, temporary)
    return archive_path
