"""Whether a process holds the same open file as a known (pid, fd): kcmp(2) KCMP_FILE.

The owner scan learns which process holds a socket by reading every /proc/<pid>/fd/<n>
link (~4 us of kernel time each: a path walk and the link text). Once one holder of a
listener is known, asking whether another process holds that same file needs no link
text: kcmp compares two fd table entries in the kernel, ~1.3 us a call here, including
the ctypes call (the standard library has no binding; nor has psutil). A socket has a
single open file (forked children, dup() and SCM_RIGHTS share it; a socket cannot be
opened again by path), so "holds the same file" is "holds the socket".

Linux only, where the kernel has it (CONFIG_KCMP) and lets us (ptrace read access to
both processes; a container's seccomp profile may refuse it) and its syscall number is
certain for this interpreter (syscall_number()): `open_comparer()` is None
otherwise, and any answer it cannot give exactly is None, for the caller to read the
process's links instead.
"""

from __future__ import annotations

import errno
import os
from stat import S_ISSOCK

from sockstat.collect.kernel import told_fd_count

KCMP_FILE = 0
# kcmp's number by (the kernel's machine, this interpreter's pointer size): libc's
# syscall() enters the table of the interpreter's own ABI, which the machine alone does
# not say. A 32-bit Python on a 64-bit kernel (i386 or x32 on x86_64, arm on aarch64,
# 31-bit on s390x) or a 64-bit one under `setarch i686` has a number of its own or
# none; any pair not listed is refused (the scan then reads links, exactly). The
# generic table's for arm64 and riscv64.
_SYSCALL = {("x86_64", 8): 312, ("i686", 4): 349, ("i386", 4): 349, ("aarch64", 8): 272,
            ("riscv64", 8): 272, ("ppc64le", 8): 354, ("ppc64", 8): 354,
            ("s390x", 8): 343}


def syscall_number(machine: str | None = None, pointer_size: int | None = None
                   ) -> int | None:
    """kcmp's syscall number for `machine` (default: the kernel's, as uname reports it)
    and `pointer_size` (default: this interpreter's), or None where it is not sure."""
    if machine is None:
        machine = os.uname().machine
    if pointer_size is None:
        import struct

        pointer_size = struct.calcsize("P")
    return _SYSCALL.get((machine, pointer_size))


class FileComparer:
    """kcmp(KCMP_FILE) through libc's syscall(); built by open_comparer()."""

    def __init__(self, call, number: int, get_errno) -> None:
        self._call = call
        self._number = number
        self._errno = get_errno

    def fd_holding(self, pid: int, fd_count: int, holder: int, holder_fd: int,
                   inode: int, procfs: str) -> int | None | bool:
        """The lowest fd of `pid` that is `holder`'s fd `holder_fd`, the socket `inode`
        (the same open file); False when it holds none; None when that cannot be told (a
        process gone or not ours to compare, the holder's fd gone or another file now):
        then read its links instead.

        `fd_count` (stat of /proc/<pid>/fd, Linux >= 6.2) is how many fds it has: the
        numbers below it are tried first (fds are allocated lowest first, so they are
        nearly always those), the directory is listed only for any beyond them."""
        found = self._search(pid, fd_count, holder, holder_fd, procfs)
        if found is None:
            return None
        # The answers were about the socket only if the holder's fd still is it: once
        # closed, every kcmp is EBADF, as for a gap in `pid`'s fds, and reads "holds
        # none"; once another file, they were about that file. A process that exited
        # meanwhile has no fds left (EBADF too) and also looked like it held none.
        try:
            held = os.stat(f"{procfs}/{holder}/fd/{holder_fd}")
            if held.st_ino != inode or not S_ISSOCK(held.st_mode):
                return None
            if found is False and not told_fd_count(pid, procfs):
                return None
        except OSError:
            return None
        return found

    def _search(self, pid: int, fd_count: int, holder: int, holder_fd: int,
                procfs: str) -> int | None | bool:
        """fd_holding()'s kcmp calls, answers not checked yet."""
        call, number = self._call, self._number
        seen = 0
        for fd in range(fd_count):
            found = call(number, holder, pid, KCMP_FILE, holder_fd, fd)
            if found == 0:
                return fd
            if found > 0:
                seen += 1
            elif self._errno() != errno.EBADF:  # EBADF: no such fd (a gap)
                return None
        if seen >= fd_count:
            return False
        try:  # fds beyond the first fd_count numbers
            rest = sorted(int(n) for n in os.listdir(f"{procfs}/{pid}/fd")
                          if int(n) >= fd_count)
        except (OSError, ValueError):
            return None
        for fd in rest:
            found = call(number, holder, pid, KCMP_FILE, holder_fd, fd)
            if found == 0:
                return fd
            if found < 0 and self._errno() != errno.EBADF:
                return None
        return False


def open_comparer(procfs: str = "/proc") -> FileComparer | None:
    """A FileComparer where kcmp works here (tried on one of our own fds) and `procfs`
    numbers processes as kcmp does (it is this PID namespace's /proc), else None."""
    number = syscall_number()
    try:
        ours = os.readlink(f"{procfs}/self") == str(os.getpid())
    except OSError:
        ours = False
    if number is None or not ours:
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syscall
    except (ImportError, OSError, AttributeError):  # ImportError: a Python without libffi
        return None
    # No argtypes: Python ints go as C ints, which libffi widens to the registers'
    # 64 bits as syscall() reads them; declaring six longs doubles the cost of a call
    # (1.3 -> 2.4 us). The probe below checks the arguments arrive as meant: the same
    # file twice, two different files, and an fd number no process has.
    call.restype = ctypes.c_long
    me = os.getpid()
    opened: list[int] = []
    try:  # three fds of our own; at the fd limit (EMFILE) there is no probe, nor kcmp
        opened.append(probe := os.open("/", os.O_RDONLY | os.O_CLOEXEC))
        opened.append(other := os.open("/", os.O_RDONLY | os.O_CLOEXEC))
        opened.append(twin := os.dup(probe))
        works = call(number, me, me, KCMP_FILE, probe, twin) == 0 \
            and call(number, me, me, KCMP_FILE, probe, other) > 0 \
            and call(number, me, me, KCMP_FILE, probe, _NO_FD) < 0 \
            and ctypes.get_errno() == errno.EBADF
    except OSError:
        works = False
    finally:
        for fd in opened:
            os.close(fd)
    return FileComparer(call, number, ctypes.get_errno) if works else None


_NO_FD = 2**31 - 1  # no fd has it: fs.nr_open, the highest fd limit, stays below INT_MAX
