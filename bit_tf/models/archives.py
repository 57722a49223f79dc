"""Unpacking `.tar` / `.tar.gz` archives from outside without letting them write outside.

An archive is unpacked member by member into a staging folder beside the target, which is
renamed onto the target only when every member is in place; on any failure the staging folder is
removed and nothing else has been written. Each member is checked twice, just before it is
created, against the folder as it stands then:

- by the standard library's extraction filter (`tarfile.data_filter`, where this Python has it),
  which refuses absolute names, names and links that resolve outside, and special files;
- by this module's own rules, which do not depend on how well that filter resolves links (the
  filter of Python releases before mid-2025 could be led outside by a chain of links): a member
  is only ever created inside real folders of the staging folder, never through a symbolic
  link; a name with `..` or an absolute name, a symbolic link that leads outside, a hard link to
  anything but a file of the archive reached through real folders, a device or FIFO, and a name
  that occurs twice are refused. Files are created new (`O_EXCL | O_NOFOLLOW`), hard links are
  copied, and after the last member every symbolic link must resolve inside the folder.

Example:
    >>> extract_archive_safely("bit_m-r50x1.tar.gz", "/tmp/bit_m-r50x1")
    '/tmp/bit_m-r50x1'
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import zlib

from bit_tf.training.atomic import atomic_path

_COPY_BYTES = 1 << 20
#: Whether the standard library's extraction filter checks each member too (Python 3.12, and the
#: security releases 3.11.4 and 3.10.12 on); this module's own rules apply either way.
STANDARD_FILTER = hasattr(tarfile, "data_filter")


class UnsafeArchiveError(ValueError):
    """An archive holds a member that would land outside the folder it is unpacked into."""


def extract_archive_safely(archive_path: str, target_dir: str) -> str:
    """Unpacks a `.tar`/`.tar.gz` into `target_dir`, refusing anything that could escape it.

    The members are created one by one in a staging folder beside `target_dir` (each checked
    as it is created: see the module's docstring), which is renamed to `target_dir` when the
    archive is whole; a refused member or a damaged archive removes the staging folder, so that
    nothing is written.

    Raises:
        UnsafeArchiveError: a member would escape `target_dir`, or is not a file, folder or link.
        ValueError: the file is not a readable (or a truncated) tar archive.
        FileExistsError: `target_dir` exists.

    Example:
        >>> extract_archive_safely("bit_m-r50x1.tar.gz", "/tmp/bit_m-r50x1")
        '/tmp/bit_m-r50x1'
    """
    target_dir = os.path.abspath(target_dir)
    # An existing target (also one another process unpacked meanwhile) is TargetExistsError,
    # a FileExistsError.
    with atomic_path(target_dir, what="Extraction target") as staging:
        os.makedirs(staging)
        try:
            archive = tarfile.open(archive_path, "r:*")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise ValueError(
                f"{archive_path!r} is not a readable .tar/.tar.gz archive ({error})."
            ) from None
        with archive:
            unpacker = _Unpacker(archive_path, archive, staging)
            try:
                for member in archive:
                    unpacker.create(member)
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise ValueError(
                    f"{archive_path!r} is damaged or cut short ({type(error).__name__}: {error})."
                ) from None
        unpacker.check_links()
    return target_dir


def _parts(name: str) -> list[str] | None:
    """The components of a member name relative to the archive root ("./a//b" -> ["a", "b"]),
    or None when it is absolute or climbs with '..'."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return None if ".." in parts else parts


class _Unpacker:
    """Creates the members of one archive in `root`, each checked as it is created."""

    def __init__(self, archive_path: str, archive: tarfile.TarFile, root: str):
        self.archive_path = archive_path
        self.archive = archive
        self.root = os.path.realpath(root)
        self.seen: set[tuple[str, ...]] = set()

    def refuse(self, member: tarfile.TarInfo, reason: str):
        raise UnsafeArchiveError(
            f"Refusing to unpack {self.archive_path!r}: member {member.name!r} {reason}. "
            "The archive may be malicious; do not use it."
        )

    def create(self, member: tarfile.TarInfo) -> None:
        parts = _parts(member.name)
        if parts is None:
            if member.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member.name):
                self.refuse(member, "has an absolute path")
            self.refuse(member, "contains '..'")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            self.refuse(member, "is a device, FIFO or other special file")
        if not parts:  # the archive's root folder itself ("." or "./")
            if member.isdir():
                return
            self.refuse(member, "names the folder the archive is unpacked into")
        if tuple(parts) in self.seen:
            self.refuse(member, "occurs twice in the archive")
        self.seen.add(tuple(parts))
        if member.issym():
            self._check_symbolic_link(member, parts)
        source = self._hard_link_source(member) if member.islnk() else None
        folder = self._real_folder(member, parts[:-1])
        if STANDARD_FILTER:
            try:
                tarfile.data_filter(member, self.root)
            except tarfile.FilterError as error:
                kind = (
                    "a symbolic link"
                    if member.issym()
                    else "a hard link"
                    if member.islnk()
                    else "a file"
                    if member.isfile()
                    else "a folder"
                )
                self.refuse(member, f"is {kind} the standard library's filter refuses ({error})")
        destination = os.path.join(folder, parts[-1])
        if os.path.lexists(destination):
            if member.isdir() and stat.S_ISDIR(os.lstat(destination).st_mode):
                return  # a folder created earlier for the members inside it
            self.refuse(member, "occurs twice in the archive")
        if member.isdir():
            os.mkdir(destination, 0o755)
        elif member.issym():
            os.symlink(member.linkname, destination)
        elif member.islnk():
            with open(source, "rb") as stream:
                self._write_new_file(destination, stream)
        else:
            stream = self.archive.extractfile(member)
            if stream is None:
                self.refuse(member, "has no contents to read")
            with stream:
                self._write_new_file(destination, stream)

    def _check_symbolic_link(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        target = member.linkname
        if not target:
            self.refuse(member, "is a symbolic link without a target")
        if os.path.isabs(target) or target.startswith(("/", "\\")):
            self.refuse(member, f"is a symbolic link to {target!r}, an absolute path")
        place = list(parts[:-1])
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not place:
                    self.refuse(member, f"is a symbolic link to {target!r}, outside the folder")
                place.pop()
            else:
                place.append(part)

    def _real_folder(self, member: tarfile.TarInfo, parts: list[str]) -> str:
        """The folder `parts` under the root, creating what is missing; every component must be
        a real folder (not a symbolic link, not a file)."""
        path = self.root
        for index, part in enumerate(parts):
            path = os.path.join(path, part)
            shown = "/".join(parts[: index + 1])
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(mode):
                self.refuse(member, f"would be written through the symbolic link {shown!r}")
            if not stat.S_ISDIR(mode):
                self.refuse(member, f"would be written inside the file {shown!r}")
        return path

    def _hard_link_source(self, member: tarfile.TarInfo) -> str:
        parts = _parts(member.linkname)
        if not parts:
            self.refuse(member, f"is a hard link to {member.linkname!r}, outside the folder")
        path = self.root
        for index, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                self.refuse(member, f"is a hard link to {member.linkname!r}, which is not in it")
            last = index == len(parts) - 1
            if stat.S_ISLNK(mode):
                self.refuse(
                    member,
                    f"is a hard link to {member.linkname!r} through the symbolic link "
                    f"{'/'.join(parts[: index + 1])!r}",
                )
            if last and not stat.S_ISREG(mode):
                self.refuse(member, f"is a hard link to {member.linkname!r}, not to a file")
        return path

    def _write_new_file(self, destination: str, stream) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        descriptor = os.open(destination, flags, 0o644)
        with os.fdopen(descriptor, "wb") as output:
            shutil.copyfileobj(stream, output, _COPY_BYTES)

    def check_links(self) -> None:
        """Every symbolic link, now that all are in place, must resolve inside the folder."""
        for folder, subfolders, files in os.walk(self.root):
            for name in subfolders + files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    continue
                shown = os.path.relpath(path, self.root)
                try:
                    resolved = os.path.realpath(path, strict=True)
                except OSError:
                    raise UnsafeArchiveError(
                        f"Refusing to unpack {self.archive_path!r}: member {shown!r} is a "
                        "symbolic link to nothing in the archive (missing, or a loop of links). "
                        "The archive may be malicious; do not use it."
                    ) from None
                if os.path.commonpath([self.root, resolved]) != self.root:
                    raise UnsafeArchiveError(
                        f"Refusing to unpack {self.archive_path!r}: member {shown!r} is a "
                        f"symbolic link that resolves outside the folder ({resolved!r}). "
                        "The archive may be malicious; do not use it."
                    )


__all__ = ["UnsafeArchiveError", "extract_archive_safely"]
