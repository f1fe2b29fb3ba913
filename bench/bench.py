"""Benchmark sockstat against ss, netstat and a psutil listing on the same socket table.

    python bench/bench.py                 # 1k, 10k and 100k sockets
    python bench/bench.py --sizes 10000   # one size
    python bench/bench.py --markdown      # the table in docs/performance.md
    python bench/bench.py --only memory   # just the --memory / -x (UNIX) cost rows

For each size it builds a real table on loopback — ~70% ESTABLISHED pairs held by
several worker processes (a process may hold at most RLIMIT_NOFILE fds), ~25% TIME_WAIT
from short connections, a few CLOSE_WAIT and listeners — then times every command a few
times on that same table (plus UNIX socketpairs, --unix-pairs, for the -x rows), in the
same run (interleaved: one run of each command per
round), and prints the median wall time, the ratio to the tool doing the same work
(`ss -tanp`, `ss -tan`, psutil) and each command's peak memory (ru_maxrss from wait4).
Ratios, not absolute times, are what compare across machines. After each size's rounds a
TIME_WAIT phase (--time-waits) makes a fresh set of TIME_WAITs and times the TIME_WAIT
listing on it at once: the table's own have mostly expired by then. It cleans up
everything it made (RST on close; TIME_WAIT left to expire, as TIME_WAIT does).

This is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time

PY = sys.executable
RUNS = 3
# The commands run as a user runs them: outside the checkout (so `-m sockstat` is the
# package this interpreter has installed, not the source tree beside the working
# directory) and with bytecode caching on (PYTHONDONTWRITEBYTECODE, common in container
# images, would make every run compile every module it imports afresh: ~80 ms a run).
RUN_DIR = "/"
RUN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
LINGER_RST = struct.pack("ii", 1, 0)


def _fd_budget() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200


def _worker(pairs: int, close_wait: int, conn, host: str) -> None:
    """Hold `pairs` established connections (+ some CLOSE_WAIT) until told to stop."""
    _fd_budget()
    made = []
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(4096)
    made.append(srv)
    addr = srv.getsockname()
    for i in range(pairs):
        c = socket.socket()
        c.setblocking(True)
        c.connect(addr)
        s, _ = srv.accept()
        made += [c, s]
        if i < close_wait:
            c.shutdown(socket.SHUT_WR)  # s sits in CLOSE_WAIT
    conn.send(addr[1])
    conn.recv()  # stop
    for sock in made:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        except OSError:
            pass
        sock.close()
    conn.send("done")


def _make_time_wait(count: int, host: str, keep: list | None = None) -> None:
    """Short connections, the server closes first: the server side lands in TIME_WAIT
    (client-side TIME_WAITs on loopback are recycled at once by tcp_tw_reuse=2). The
    listener is closed after, unless `keep` is given: then it is appended there (its
    TIME_WAITs are named through it, as a live server's are)."""
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(4096)
    addr = srv.getsockname()
    try:
        for _ in range(count):
            with socket.socket() as c:
                c.connect(addr)
                s, _ = srv.accept()
                s.close()
                c.recv(1)  # the server's FIN
    except BaseException:  # a failed connect (ports run out) leaves no listener behind
        srv.close()
        raise
    if keep is None:
        srv.close()
    else:
        keep.append(srv)


# TIME_WAITs per server address in the TIME_WAIT phase. A client's connect() walks the
# ephemeral ports for one destination from a per-destination offset, in steps of 2 (and
# small random steps), so after ~14k connections to one address and port it comes back
# to a port whose connection still sits in TIME_WAIT on the server side, and that SYN
# reopens it: one server address topped out at ~16k TIME_WAITs (25k asked), 5,000 each
# at ~23k; at 2,500 each every connection leaves one.
TIME_WAIT_PER_ADDRESS = 2500
TIME_WAIT_PHASE_HOSTS = "127.0.2.{}"  # apart from the table's own (127.0.1.x)


def make_time_waits(count: int, hosts: str, keep: list | None = None) -> None:
    """`count` server-side TIME_WAITs, TIME_WAIT_PER_ADDRESS per server address."""
    for i in range(0, count, TIME_WAIT_PER_ADDRESS):
        _make_time_wait(min(TIME_WAIT_PER_ADDRESS, count - i),
                        hosts.format(1 + i // TIME_WAIT_PER_ADDRESS), keep)


def _unix_worker(pairs: int, conn) -> None:
    """Hold `pairs` UNIX stream socketpairs (what -x lists) until told to stop."""
    _fd_budget()
    made = [s for _ in range(pairs) for s in socket.socketpair()]
    conn.send(len(made))
    conn.recv()
    for sock in made:
        sock.close()
    conn.send("done")


class Table:
    def __init__(self, total: int, unix_pairs: int = 0) -> None:
        self.total = total
        self.unix_pairs = unix_pairs
        self.workers: list[tuple[mp.Process, object]] = []
        self.ports: list[int] = []

    def __enter__(self) -> Table:
        established = int(self.total * 0.70) // 2  # pairs
        tw = int(self.total * 0.25)
        per_worker = max(1, min(_fd_budget() // 2 - 10, 9000))
        ctx = mp.get_context("fork")
        left = established
        n = 0
        while left > 0:
            pairs = min(per_worker, left)
            parent, child = ctx.Pipe()
            # spread connections over 127.0.0.x so one address's ephemeral range is
            # never the limit
            host = f"127.0.0.{2 + n % 200}"
            p = ctx.Process(target=_worker, args=(pairs, max(1, pairs // 200), child, host),
                            daemon=True)
            p.start()
            self.workers.append((p, parent))
            left -= pairs
            n += 1
        left = self.unix_pairs
        while left > 0:
            pairs = min(per_worker, left)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_unix_worker, args=(pairs, child), daemon=True)
            p.start()
            self.workers.append((p, parent))
            left -= pairs
        for _, parent in self.workers:
            self.ports.append(parent.recv())
        for i in range(0, tw, 20000):
            _make_time_wait(min(20000, tw - i), f"127.0.1.{1 + i // 20000}")
        return self

    def __exit__(self, *exc) -> None:
        for _, parent in self.workers:
            try:
                parent.send("stop")
            except OSError:
                pass
        for p, parent in self.workers:
            try:
                parent.recv()
            except (EOFError, OSError):
                pass
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one run of a command, output thrown away."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=RUN_DIR, env=RUN_ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1, 2) or (code and "check" not in argv):  # check's verdict is 1/2
        raise SystemExit(f"{' '.join(argv)} failed with {code}")
    return elapsed, usage.ru_maxrss / 1024


def time_command(argv: list[str], runs: int = RUNS) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MB) of a command."""
    samples = [run_once(argv) for _ in range(runs)]
    return statistics.median(t for t, _ in samples), max(mb for _, mb in samples)


def time_interleaved(cmds: dict[str, list[str]], runs: int = RUNS
                     ) -> dict[str, tuple[float, float]]:
    """Every command once per round, `runs` rounds: a load spike from elsewhere on the
    machine then hits every command alike instead of one command's every run."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            samples[name].append(run_once(argv))
    return {name: (statistics.median(t for t, _ in got), max(mb for _, mb in got))
            for name, got in samples.items()}


PSUTIL_LISTING = (
    "import psutil\n"
    "names = {}\n"
    "for c in psutil.net_connections('tcp'):\n"
    "    if c.pid and c.pid not in names:\n"
    "        try: names[c.pid] = psutil.Process(c.pid).name()\n"
    "        except psutil.Error: names[c.pid] = '?'\n"
    "    print(c.status, c.laddr, c.raddr, names.get(c.pid))\n"
)


def commands() -> dict[str, list[str]]:
    sockstat = [PY, "-m", "sockstat"]
    cmds = {
        "sockstat --json": [*sockstat, "--json"],
        "sockstat --all (piped, with processes)": [*sockstat, "--all"],
        "sockstat --json --source proc": [*sockstat, "--json", "--source", "proc"],
        "sockstat --json --no-processes": [*sockstat, "--json", "--no-processes"],
        "sockstat summary": [*sockstat, "summary"],
        "sockstat summary --no-processes": [*sockstat, "summary", "--no-processes"],
        "sockstat -s time-wait --json": [*sockstat, "-s", "time-wait", "--json"],
        "sockstat --port 8080": [*sockstat, "--port", "8080"],
        "sockstat check --interval 0": [*sockstat, "check", "--interval", "0"],
        # the lab beside the table: its looks cost the same whatever the table's size
        # (bench/demo_cost.py compares two checkouts)
        "sockstat demo all --hold 0": [*sockstat, "demo", "all", "--hold", "0"],
        # socket memory is asked of the kernel only with --memory: these rows against the
        # --json / --all rows above are its cost, ss -tanm's against ss -tan ss's
        "sockstat --json --memory": [*sockstat, "--json", "--memory"],
        "sockstat --all --memory (piped)": [*sockstat, "--all", "--memory"],
        "sockstat -t --json --no-processes": [*sockstat, "-t", "--json", "--no-processes"],
        "sockstat -t --json --no-processes --memory": [*sockstat, "-t", "--json",
                                                       "--no-processes", "--memory"],
        "sockstat -x --json": [*sockstat, "-x", "--json"],
        "sockstat -x --json --no-processes": [*sockstat, "-x", "--json", "--no-processes"],
        "ss -tanp": ["ss", "-tanp"],
        "ss -tan": ["ss", "-tan"],
        "ss -tan state time-wait": ["ss", "-tan", "state", "time-wait"],
        "ss -tanm": ["ss", "-tanm"],
        "ss -xa": ["ss", "-xa"],
        "ss -xap": ["ss", "-xap"],
        "netstat -tanp": ["netstat", "-tanp"],
        "psutil listing": [PY, "-c", PSUTIL_LISTING],
    }
    return {k: v for k, v in cmds.items() if shutil.which(v[0])}


# what each command is compared with: the tool that does the same work
REFERENCE = {
    "sockstat --json": "ss -tanp",
    "sockstat --all (piped, with processes)": "ss -tanp",
    "sockstat --json --source proc": "ss -tanp",
    "sockstat --json --no-processes": "ss -tan",
    "sockstat summary": "ss -tanp",
    "sockstat summary --no-processes": "ss -tan",
    "sockstat -s time-wait --json": "ss -tan state time-wait",
    "sockstat --port 8080": "ss -tan",
    "sockstat --json --memory": "ss -tanp",
    "sockstat --all --memory (piped)": "ss -tanp",
    "sockstat -t --json --no-processes": "ss -tan",
    "sockstat -t --json --no-processes --memory": "ss -tanm",
    "sockstat -x --json": "ss -xap",
    "sockstat -x --json --no-processes": "ss -xa",
    "netstat -tanp": "ss -tanp",
    "psutil listing": "ss -tanp",
}


def _tcp_count(*state: str) -> int:
    out = subprocess.run(["ss", "-Htan", *state], capture_output=True, text=True).stdout
    return len(out.splitlines())


def settle(limit: int = 2000, seconds: float = 75) -> None:
    """Wait (at most TIME_WAIT's 60 s and a bit) for an earlier table's TIME_WAITs to
    expire, so each size is measured on the table it names."""
    deadline = time.monotonic() + seconds
    while _tcp_count("state", "time-wait") > limit and time.monotonic() < deadline:
        time.sleep(2)


MEMORY_ROWS = ("sockstat --json", "sockstat --all (piped, with processes)",
               "sockstat -t --json --no-processes", "sockstat --port 8080", "ss -tanp",
               "ss -tan")


# The TIME_WAIT phase: the table's own TIME_WAITs (made first, 60 s of life) have mostly
# expired by the time the rounds reach `-s time-wait --json`, so that row measures little
# but start-up; this phase makes a fresh set (its listeners kept, so the rows are named
# through them) and times these at once, interleaved.
TIME_WAIT_PHASE = "fresh TIME_WAITs"
TIME_WAIT_COMMANDS = {
    f"sockstat -s time-wait --json ({TIME_WAIT_PHASE})":
        [PY, "-m", "sockstat", "-s", "time-wait", "--json"],
    f"sockstat -s time-wait --json --no-processes ({TIME_WAIT_PHASE})":
        [PY, "-m", "sockstat", "-s", "time-wait", "--json", "--no-processes"],
    f"ss -tan state time-wait ({TIME_WAIT_PHASE})": ["ss", "-tan", "state", "time-wait"],
}
REFERENCE.update({name: f"ss -tan state time-wait ({TIME_WAIT_PHASE})"
                  for name in TIME_WAIT_COMMANDS if name.startswith("sockstat")})


def time_wait_phase(count: int, runs: int) -> tuple[tuple[int, int], dict]:
    """Make `count` fresh TIME_WAITs and time TIME_WAIT_COMMANDS on them at once; the
    TIME_WAIT rows `ss` counted at the phase's start and end, and the results."""
    keep: list[socket.socket] = []
    try:
        made = time.monotonic()
        make_time_waits(count, TIME_WAIT_PHASE_HOSTS, keep)
        first = _tcp_count("state", "time-wait")
        print(f"# TIME_WAIT phase: {first:,} TIME_WAIT rows (made {count:,} in "
              f"{time.monotonic() - made:.1f} s)", file=sys.stderr)
        results = time_interleaved(TIME_WAIT_COMMANDS, runs)
        last = _tcp_count("state", "time-wait")
    finally:
        for sock in keep:
            sock.close()
    print(f"# TIME_WAIT phase: {last:,} TIME_WAIT rows at its end", file=sys.stderr)
    for name, (t, mb) in results.items():
        print(f"  {name:42s} {t:7.3f}s {mb:6.0f} MB", file=sys.stderr)
    return (first, last), results


def measure(size: int, unix_pairs: int = 0, only: str | None = None, runs: int = RUNS,
            time_waits: int = 0) -> tuple[int, dict[str, tuple[float, float]],
                                          tuple[int, int] | None]:
    """The table's TCP sockets as `ss` counts them, each command's (median wall time,
    peak RSS), and the TIME_WAIT phase's row counts (None without one)."""
    settle()
    with Table(size, unix_pairs):
        actual = _tcp_count()
        print(f"# table: {actual:,} TCP sockets (asked for {size:,}), {unix_pairs:,} UNIX "
              "socketpairs", file=sys.stderr)
        cmds = {name: argv for name, argv in commands().items()
                if only != "memory" or "--memory" in argv or "-x" in argv or "-xa" in name
                or "-tanm" in name or name in MEMORY_ROWS}
        results = time_interleaved(cmds, runs)
        for name, (t, mb) in results.items():
            print(f"  {name:42s} {t:7.3f}s {mb:6.0f} MB", file=sys.stderr)
        phase = None
        if time_waits and only is None:
            phase, more = time_wait_phase(time_waits, runs)
            results |= more
    return actual, results, phase


def report(all_results: dict[int, dict], markdown: bool,
           phases: dict[int, tuple[int, int] | None] | None = None) -> None:
    sizes = sorted(all_results)
    phases = phases or {}
    names = list(next(iter(all_results.values())))
    biggest = all_results[sizes[-1]]
    if markdown:
        print("| command | " + " | ".join(f"{s:,} TCP sockets" for s in sizes)
              + f" | ratio at {sizes[-1]:,} | peak RSS |")
        print("| --- |" + " --- |" * (len(sizes) + 2))
    for name in names:
        cells = [f"{all_results[size][name][0]:.3f} s" for size in sizes]
        if name.endswith(f"({TIME_WAIT_PHASE})"):  # say how many rows it had
            cells = [f"{cell} ({phases[size][0]:,} → {phases[size][1]:,} rows)"
                     if phases.get(size) else cell for cell, size in zip(cells, sizes, strict=True)]
        ref = REFERENCE.get(name)
        ratio = ""
        if ref in biggest:
            ratio = f"{biggest[name][0] / biggest[ref][0]:.2f}× `{ref}`"
            if name.startswith("sockstat") and ref == "ss -tanp" \
                    and "psutil listing" in biggest:
                ratio += f", {biggest[name][0] / biggest['psutil listing'][0]:.2f}× psutil"
        rss = f"{biggest[name][1]:.0f} MB"
        if markdown:
            print(f"| `{name}` | " + " | ".join(cells) + f" | {ratio} | {rss} |")
        else:
            print(f"{name:42s} " + "  ".join(cells) + f"  {ratio}  {rss}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--unix-pairs", type=int, default=1000,
                        help="UNIX socketpairs held during the run (for the -x rows)")
    parser.add_argument("--time-waits", type=int, default=25000,
                        help="fresh TIME_WAITs made for the TIME_WAIT phase after each "
                             "size's rounds (0: no phase)")
    parser.add_argument("--only", choices=("memory",),
                        help="memory: only the rows that show the cost of --memory and -x")
    args = parser.parse_args()
    # start-up on an idle host (an earlier table's TIME_WAITs gone), through the installed
    # entry point as a user runs it
    settle(limit=100)
    measured = subprocess.run([PY, "-c", "import sockstat; print(sockstat.__file__)"],
                              capture_output=True, text=True, cwd=RUN_DIR, env=RUN_ENV)
    print(f"# measuring {measured.stdout.strip() or measured.stderr.strip()}", file=sys.stderr)
    entry = shutil.which("sockstat", path=os.path.dirname(PY)) or shutil.which("sockstat") or PY
    idle = time_interleaved({
        "python -c pass": [PY, "-c", "pass"],
        "sockstat --version": [entry, "--version"] if entry != PY
        else [PY, "-m", "sockstat", "--version"],
        "sockstat --port 8080": [entry, "--port", "8080"] if entry != PY
        else [PY, "-m", "sockstat", "--port", "8080"],
    }, runs=7)
    for name, (t, _) in idle.items():
        print(f"# idle host: {name} {t * 1000:.0f} ms wall", file=sys.stderr)
    # columns are labelled with the table actually measured (ss's count), not the size
    # asked for: churn and tcp_tw_reuse make them differ
    results, phases = {}, {}
    for size in args.sizes:
        actual, results[actual], phases[actual] = measure(size, args.unix_pairs, args.only,
                                                          args.runs, args.time_waits)
    report(results, args.markdown, phases)
    print("\nidle host: " + ", ".join(f"`{name}` {t * 1000:.0f} ms"
                                      for name, (t, _) in idle.items()))


if __name__ == "__main__":
    main()
