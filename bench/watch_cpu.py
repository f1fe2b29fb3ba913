"""What does `sockstat watch` cost? Its CPU share of one core at 10k and 100k sockets.

    python bench/watch_cpu.py                   # 10k and 100k sockets, interval 2 s
    python bench/watch_cpu.py --sockets 10000 --refreshes 10 --interval 2

How: holder processes (this script re-run with --hold) open N/2 connected pairs on
127.0.0.1, several processes because RLIMIT_NOFILE caps one process's fds, and every
socket gets SO_LINGER {1,0} so that their exit leaves no TIME_WAIT behind. Then
`sockstat watch --jsonl --interval I --count 1+R` runs over the whole table (no filter:
the worst case) with and without the process scan, and with a kernel-side state filter.
Its CPU time (utime + stime from /proc/<pid>/stat) is sampled when the first line
arrives and after the last one:

    start-up  = CPU until the first line (imports, first collection, full /proc scan)
    share     = CPU between first and last line / wall time between them
                (% of one core, sleeping included: what `top` would show)

With --churn R (default 100), once more while the biggest holder opens R connections a
second and resets each ~2 s later: every refresh then builds new sockets and looks for
their owner among that process's ~20k fds (the worst place for it to be).

For reference, `ss -tan` (the same kernel dump, parsed in C) is timed at each size: its
system time is the kernel's share, which no user-space parser can avoid. System time
varies with what else the machine does (other processes making and closing sockets);
user time is what sockstat's own code costs.

The holders read stdin and exit when it closes, so they die with this script even on
Ctrl-C or a crash. Not part of the test suite: a benchmark, run by hand or by CI.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINGER_RST = struct.pack("ii", 1, 0)
BATCH = 1000  # connections made before accepting them: below somaxconn and the backlog


def _pair(server: socket.socket, port: int) -> tuple[socket.socket, socket.socket]:
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    client.connect(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    return client, conn


def churn(server: socket.socket, port: int, rate: float) -> None:
    """Until stdin closes: open `rate` connections a second in this (big) process and
    reset each about 2 s later, so every refresh sees new sockets whose owner has to be
    found among this process's fds."""
    import collections
    import select

    ring: collections.deque = collections.deque()
    next_at = time.monotonic()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, next_at - time.monotonic()))
        if ready and not sys.stdin.readline():
            break
        ring.append(_pair(server, port))
        if len(ring) > 2 * rate:
            for sock in ring.popleft():
                sock.close()
        next_at += 1 / rate
    for pair in ring:
        for sock in pair:
            sock.close()


def hold(pairs: int, churn_rate: float = 0.0) -> None:
    """Child mode: make `pairs` connected pairs on one listener, print 'ready <port>',
    then keep them (and churn, if asked) until stdin closes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    server.bind(("127.0.0.1", 0))
    server.listen(BATCH * 2)
    port = server.getsockname()[1]
    held: list[socket.socket] = [server]
    made = 0
    while made < pairs:
        batch = min(BATCH, pairs - made)
        for _ in range(batch):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            client.connect(("127.0.0.1", port))
            held.append(client)
        for _ in range(batch):
            conn, _ = server.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            held.append(conn)
        made += batch
    print(f"ready {port}", flush=True)
    if churn_rate:
        churn(server, port, churn_rate)
    else:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    for sock in held:
        sock.close()


class Holders:
    """N sockets held by child processes; a context manager that always ends them."""

    def __init__(self, sockets: int, churn: float = 0.0) -> None:
        self.churn = churn  # new connections a second, in the first (biggest) holder
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # pairs per holder: two fds each, with room for the churn ring (4 fds per conn/s)
        spare = 100 + int(4 * churn) + 10
        per_process = max(1000, (min(hard, 1 << 20) - spare) // 2)
        pairs = sockets // 2
        self.plan = []
        while pairs > 0:
            self.plan.append(min(per_process, pairs))
            pairs -= self.plan[-1]
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def __enter__(self) -> Holders:
        try:
            for i, pairs in enumerate(self.plan):
                extra = ["--hold-churn", str(self.churn)] if self.churn and i == 0 else []
                proc = subprocess.Popen([sys.executable, __file__, "--hold", str(pairs),
                                         *extra],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
                self.procs.append(proc)
            for proc in self.procs:
                line = proc.stdout.readline().split()
                if not line or line[0] != "ready":
                    raise RuntimeError("a socket holder failed (see its stderr)")
                self.ports.append(int(line[1]))
        except BaseException:
            self.__exit__()
            raise
        return self

    def check(self) -> None:
        """Raise if a holder died (its sockets, or its churn, are gone)."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a socket holder exited ({proc.returncode})")

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measure(extra: list[str], interval: float, refreshes: int) -> dict:
    """Run `sockstat watch --jsonl` for 1 + `refreshes` refreshes. Start-up = CPU until
    the first line (imports, first collection, first full /proc scan); the share is the
    CPU used between the first and the last line over the wall time between them."""
    env = dict(os.environ, NO_COLOR="1")
    args = [sys.executable, "-m", "sockstat", "watch", "--jsonl", "--interval", str(interval),
            "--count", str(1 + refreshes), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    try:
        first = proc.stdout.readline()
        start_cpu, start_wall = _cpu_seconds(proc.pid), time.monotonic()
        last = first
        for _ in range(refreshes):
            last = proc.stdout.readline() or last
        # an exited child stays a zombie until waited for, and keeps its CPU times
        end_cpu, end_wall = _cpu_seconds(proc.pid), time.monotonic()
    finally:
        proc.stdout.close()
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"sockstat watch failed ({proc.returncode}): "
                               f"{proc.stderr.read()}")
        proc.stderr.close()
    import json

    line = json.loads(last)
    user, system = end_cpu[0] - start_cpu[0], end_cpu[1] - start_cpu[1]
    wall = end_wall - start_wall
    return {"start_cpu_s": sum(start_cpu), "per_refresh_cpu_ms": (user + system) / refreshes
            * 1000, "share": (user + system) / wall, "user_share": user / wall,
            "system_share": system / wall, "sockets_seen": line["total"],
            "opened_per_s": line["opened_per_s"] or 0.0}


def ss_cost(runs: int = 5) -> tuple[float, float] | None:
    """(user, system) CPU seconds of one `ss -tan` (the same kernel dump, in C): the
    floor any refresh of the whole table pays. None without ss."""
    import shutil

    ss = shutil.which("ss")
    if ss is None:
        return None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        subprocess.run([ss, "-tan"], stdout=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) / runs,
            (after.ru_stime - before.ru_stime) / runs)


def _row(count, label: str, start: float | None, per_refresh: float, share: float,
         user: float, system: float) -> None:
    count = f"{count:,}" if isinstance(count, int) else count
    start_text = f"{start:.2f}s" if start is not None else ""
    print(f"{count:>8}  {label:<38} {start_text:>7} {per_refresh * 1000:>7.0f}ms "
          f"{share:>6.1%} ({user:>5.1%} {system:>5.1%})", flush=True)


def _report(label: str, r: dict) -> None:
    _row(r["sockets_seen"], label, r["start_cpu_s"], r["per_refresh_cpu_ms"] / 1000,
         r["share"], r["user_share"], r["system_share"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hold-churn", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--sockets", type=int, action="append",
                        help="sockets to create (repeatable; default 10000 and 100000)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--churn", type=float, default=100.0,
                        help="also measure with this many new connections a second, made "
                             "and reset ~2 s later by the biggest holder (0: skip)")
    parser.add_argument("--refreshes", type=int, default=10,
                        help="steady-state refreshes measured after the first")
    args = parser.parse_args()
    if args.hold is not None:
        hold(args.hold, args.hold_churn)
        return 0
    sizes = args.sockets or [10_000, 100_000]
    modes = [
        ("whole table, with processes", []),
        ("whole table, --no-processes", ["--no-processes"]),
        ("--state close-wait (kernel-filtered)", ["--state", "close-wait"]),
    ]
    print(f"sockstat watch CPU share, interval {args.interval:g}s, "
          f"{args.refreshes} steady refreshes, {os.cpu_count()} CPUs")
    print(f"{'sockets':>8}  {'mode':<38} {'start':>7} {'/refresh':>9} {'share':>7} "
          f"{'(user':>6} {'sys)':>6}")
    for n in sizes:
        with Holders(n) as holders:
            floor = ss_cost()
            if floor is not None:
                user, system = floor
                _row("", "ss -tan, once per interval (reference)", None, user + system,
                     (user + system) / args.interval, user / args.interval,
                     system / args.interval)
            for label, extra in modes:
                _report(label, measure(extra, args.interval, args.refreshes))
            holders.check()
        if args.churn:
            with Holders(n, churn=args.churn) as holders:
                r = measure([], args.interval, args.refreshes)
                holders.check()
                # both ends of each loopback connection are new sockets
                _report(f"whole table + {args.churn:g} conn/s (opened "
                        f"{r['opened_per_s']:.0f}/s)", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
