"""Reading one /proc file, without hanging on something that is not one.

`--procfs` (and library callers) may point at a copy of /proc, where `net/tcp` can be a
FIFO (open() would block until a writer comes), a directory or a symlink loop. The file
is opened non-blocking and must be a regular file (every /proc file is, with size 0);
anything else is SourceUnavailable naming the path. FileNotFoundError and
PermissionError pass through unchanged: callers treat those as "absent" or "denied".

`read_lines` streams a big table (/proc/net/tcp: ~150 bytes a socket, 15 MB at 100k) a
chunk at a time, so its parser never holds the whole text, its decoded copy and the
list of its lines at once; `read_bytes` reads a small file whole.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator, Iterator

from sockstat.errors import SourceUnavailable

CHUNK = 1 << 20  # one big read: the kernel's seq_file hands out a page per read otherwise


def read_bytes(path: str) -> bytes:
    return b"".join(read_chunks(path))


def read_chunks(path: str, chunk: int = CHUNK) -> Generator[bytes, None, None]:
    """The file's bytes, `chunk` at a time. Opened and checked now (the errors above are
    raised by this call); reading errors come from the iteration."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:  # ELOOP, ENOTDIR, EIO ...
        raise SourceUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceUnavailable(f"cannot read {path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return _chunks(fd, path, chunk)


def _chunks(fd: int, path: str, size: int) -> Generator[bytes, None, None]:
    try:
        while chunk := os.read(fd, size):
            yield chunk
    except PermissionError:
        raise
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_lines(path: str, encoding: str = "ascii", chunk: int = CHUNK
               ) -> Generator[str, None, None]:
    """The file's lines (as str.splitlines() gives them), decoded a chunk at a time;
    opened and checked now, like read_chunks. Close it when stopping early."""
    return _lines(read_chunks(path, chunk), encoding)


def _lines(chunks: Iterator[bytes], encoding: str) -> Generator[str, None, None]:
    rest = b""
    try:
        for chunk in chunks:
            data = rest + chunk if rest else chunk
            cut = data.rfind(b"\n") + 1  # whole lines only: "\r\n" and UTF-8 stay whole
            rest = data[cut:]
            if cut:
                yield from data[:cut].decode(encoding, "replace").splitlines()
        if rest:
            yield from rest.decode(encoding, "replace").splitlines()
    finally:
        chunks.close()
