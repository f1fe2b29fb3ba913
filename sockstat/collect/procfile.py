"""Reading one /proc file whole, without hanging on something that is not one.

`--procfs` (and library callers) may point at a copy of /proc, where `net/tcp` can be a
FIFO (open() would block until a writer comes), a directory or a symlink loop. The file
is opened non-blocking and must be a regular file (every /proc file is, with size 0);
anything else is SourceUnavailable naming the path. FileNotFoundError and
PermissionError pass through unchanged: callers treat those as "absent" or "denied".
"""

from __future__ import annotations

import os
import stat

from sockstat.errors import SourceUnavailable

CHUNK = 1 << 20  # one big read: the kernel's seq_file hands out a page per read otherwise


def read_bytes(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:  # ELOOP, ENOTDIR, EIO ...
        raise SourceUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceUnavailable(f"cannot read {path}: not a regular file")
        chunks = []
        while chunk := os.read(fd, CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    except PermissionError:
        raise
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
