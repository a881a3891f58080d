"""Opening the user's files: regular files only, without blocking, and read within a bound.

A path can name something that is not a file: a FIFO (opening it waits for a writer, in a
cron job forever), a device such as ``/dev/zero`` or ``/dev/urandom`` (reading it never
ends, so a whole-file read takes every byte of memory), or a directory. ``open_regular``
refuses them all before reading a byte: it stats the path, opens it with ``O_NONBLOCK`` (so
that a FIFO does not block the open; the flag is cleared once open) and checks the opened
descriptor with ``fstat``, since a stat of the path alone races with a rename.

``read_all`` reads a file whose size is bounded by what it holds (a config, a model, a
checkpoint): its size is checked against a limit with ``fstat`` before reading, and the read
takes at most that size plus one byte, so a file that grows (or shrinks) while it is read is
refused too, and memory stays bounded whatever the file does.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Refusal = Callable[[str], Exception]  # the error to raise, from its message

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0) | _NONBLOCK
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_regular(path: Path | str, *, refuse: Refusal, advice: str = "") -> BinaryIO:
    """``path`` opened for reading in binary, when it is a regular file (after following
    symbolic links); ``refuse("<path>: is a FIFO ..., not a regular file; <advice>")`` when
    it is anything else. OSError (no such file, permission denied) is left to the caller."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # not opened at all: opening a device can have effects
        raise refuse(not_regular(path, mode, advice))
    fd = os.open(path, _FLAGS | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the stat and the open
            raise refuse(not_regular(path, mode, advice))
        if _NONBLOCK:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def not_regular(path: Path | str, mode: int, advice: str = "") -> str:
    """The message for a path that is ``mode`` (a stat mode) rather than a regular file."""
    what = next((name for test, name in _KINDS if test(mode)), "something else")
    if os.path.islink(path):
        what += f" (it links to {os.path.realpath(path)})"
    return f"{path}: is {what}, not a regular file" + (f"; {advice}" if advice else "")


def size_of(handle: BinaryIO) -> int:
    """The size in bytes of an open file, by ``fstat``."""
    return os.fstat(handle.fileno()).st_size


def check_size(
    handle: BinaryIO, path: Path | str, *, limit: int, refuse: Refusal, advice: str = ""
) -> int:
    """The ``fstat`` size of an open file; ``refuse`` when it is larger than ``limit``."""
    size = size_of(handle)
    if size > limit:
        raise refuse(
            f"{path}: is larger than {_size(limit)} ({_size(size)})"
            + (f"; {advice}" if advice else "")
        )
    return size


def read_all(
    handle: BinaryIO, path: Path | str, *, limit: int, refuse: Refusal, advice: str = ""
) -> bytes:
    """The whole of an open regular file, from its start; ``refuse`` when ``fstat`` says it
    is larger than ``limit`` bytes, or when the bytes read are not the ``fstat`` size (the
    file changed while it was read). At most that size plus one byte is read."""
    size = check_size(handle, path, limit=limit, refuse=refuse, advice=advice)
    handle.seek(0)
    data = handle.read(size + 1)
    if len(data) != size:
        raise refuse(
            f"{path}: changed while it was read ({size} bytes, then {len(data)}); "
            "read it again once nothing is writing it"
        )
    return data


def read_bounded(path: Path | str, *, limit: int, refuse: Refusal, advice: str = "") -> bytes:
    """The bytes of the regular file at ``path``, if it holds at most ``limit`` of them."""
    with open_regular(path, refuse=refuse, advice=advice) as handle:
        return read_all(handle, path, limit=limit, refuse=refuse, advice=advice)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale and count % scale == 0:
            return f"{count // scale} {unit}"
    return f"{count} bytes"
