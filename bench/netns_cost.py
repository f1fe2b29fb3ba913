"""What does `--netns` cost? The same sockets in 10 namespaces versus in one.

    python bench/netns_cost.py                       # 10 namespaces x 1,601 sockets, A/B main
    python bench/netns_cost.py --runs 9 --ipv6       # half the connections over ::1
    python bench/netns_cost.py --against HEAD~3      # A/B against another commit
    python bench/netns_cost.py --against ''          # this tree only

How (needs root, `ip`, `unshare`): the script re-runs itself inside its own PID and mount
namespace (`unshare --pid --fork --mount-proc`) with a /run/netns of its own, so the
owner scan sees only its own processes and `--netns` finds only its own namespaces,
whatever else runs on the machine (and other runs never see these). There, namespaces
are made with `ip netns add`, loopback up, and in each a holder process (this script
with --hold) opens C connected pairs on 127.0.0.1:8080 (2C + 1 sockets; with --ipv6 half
of them on [::1]:8080, 2C + 2). The `one` layout holds the same total in one namespace
(namespaces x C connections); one more namespace holds only a listener.

Every TCP dump walks the kernel's whole TCP hash table, which all namespaces share, so
its cost grows with every socket in it, whichever namespace holds it. So by default each
round builds one layout, measures it, removes it and builds the other, as on two real
hosts (the order alternates); --together keeps both in the kernel at once, which is
quicker but makes each of the ten walks cross the one layout's sockets as well.

Each tree measured (this one, and with --against REF `git archive REF` unpacked in a
temporary folder) gets its own long-lived worker process that imports sockstat once,
as the library, watch and the exporter do, and runs on request one

    one     collect(netns="sockstat-bench-one")
    ten     collect(netns="sockstat-bench-0,...,sockstat-bench-9")
    empty   collect(netns="sockstat-bench-empty")   (the listener only; ten layout up)

with or without processes. Within a round every tree's cases run once, in a rotating
order, so the load of other work on the machine falls on all of them alike; the
medians are printed with the ratio ten/one (the issue's target: <= 1.5x), each case's
CPU time (user + system, its forked children included), the kernel's share (bare TCP
dumps of the same namespaces, replies counted, not parsed), one bare dump of the
listener-only namespace (the walk every namespace pays) and, as a reference,
`ss -tan -N NAME`, one run per namespace.

Everything made is removed in a finally, even on Ctrl-C. Not part of the test suite:
nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

PREFIX = "sockstat-bench-"
HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)

# A tree's worker: one collect() per request line "SPEC PROCESSES"; it answers
# "wall cpu" in seconds (CPU: this process's threads plus the children it reaped).
WORKER = r"""
import resource, sys, time
from sockstat.collect import collect
from sockstat.query import Query

def cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

print("ready", flush=True)
for line in sys.stdin:
    spec, processes = line.split()
    c0, t0 = cpu(), time.perf_counter()
    snap = collect(Query(), netns=spec, processes=processes == "1")
    wall, used = time.perf_counter() - t0, cpu() - c0
    print(f"{wall} {used} {len(snap.sockets)}", flush=True)
"""


def hold(connections: int, ipv6: bool) -> None:
    """Inside a namespace: C connected pairs, RST on exit (no TIME_WAIT left)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * connections + 64)),
                                                hard))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    servers = [(socket.AF_INET, "127.0.0.1")] + ([(socket.AF_INET6, "::1")] if ipv6 else [])
    held = []
    for family, host in servers:
        srv = socket.socket(family)
        srv.bind((host, 8080))
        srv.listen(4096)
        held.append(srv)
    for i in range(connections):
        srv = held[i % len(servers)]
        client = socket.create_connection(srv.getsockname()[:2])
        conn, _ = srv.accept()
        held += [client, conn]
    print("ready", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class Worker:
    """A long-lived Python process with one tree's sockstat imported."""

    def __init__(self, name: str, tree: str) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=tree)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=tree, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"worker for {name} ({tree}) failed to start")

    def run(self, spec: str, processes: bool) -> tuple[float, float, int]:
        self.proc.stdin.write(f"{spec} {int(processes)}\n")
        self.proc.stdin.flush()
        wall, cpu, count = self.proc.stdout.readline().split()
        return float(wall), float(cpu), int(count)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def export_tree(ref: str, into: str) -> str:
    """`git archive REF` unpacked under `into`: the tree to compare with."""
    archive = subprocess.run(["git", "-C", TREE, "archive", ref], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def _ss(namespace: str) -> None:
    subprocess.run(["ss", "-tan", "-N", namespace], stdout=subprocess.DEVNULL, check=True)


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class Layout:
    """Namespaces NAME -> connections, each with a holder process, made and removed."""

    def __init__(self, connections: dict[str, int], ipv6: bool) -> None:
        self.connections, self.ipv6 = connections, ipv6
        self.holders: list[subprocess.Popen] = []
        self.made: list[str] = []

    def __enter__(self) -> Layout:
        try:
            for name, connections in self.connections.items():
                subprocess.run(["ip", "netns", "add", name], check=True)
                self.made.append(name)
                holder = subprocess.Popen(
                    ["ip", "netns", "exec", name, sys.executable, __file__, "--hold",
                     str(connections)] + (["--ipv6"] if self.ipv6 else []),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self.holders.append(holder)
                if holder.stdout.readline().strip() != "ready":
                    raise SystemExit(f"holder in {name} failed")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        for holder in self.holders:
            try:
                holder.stdin.close()
                holder.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                holder.kill()
        for name in self.made:
            subprocess.run(["ip", "netns", "delete", name], check=False)
        self.holders, self.made = [], []


def bare_dumps(paths: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one sock_diag TCP dump (all states, IPv4 and IPv6 in one
    TCPDIAG_GETSOCK request) of each namespace at `paths`, the replies only counted:
    the kernel's share of a read, its walks of the shared TCP hash and its copying."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    made: list[socket.socket] = []

    def enter() -> None:  # in a thread of its own: setns moves only that thread
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            libc.setns(fd, 0x40000000)
            os.close(fd)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    # struct inet_diag_req: family AF_UNSPEC, a zero sockid, every state, no dbs
    body = struct.pack("=BBBB", socket.AF_UNSPEC, 0, 0, 0) + bytes(48) \
        + struct.pack("=II", 0xFFF, 0)
    request = struct.pack("=IHHII", 16 + len(body), 18, 0x301, 1, 0) + body
    cpu, wall = time.thread_time(), time.perf_counter()
    for nl in made:
        nl.send(request)
        done = False
        while not done:
            data = nl.recv(65536)
            offset = 0
            while offset < len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                done = done or kind in (2, 3)  # NLMSG_ERROR, NLMSG_DONE
                offset += (length + 3) & ~3
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    for nl in made:
        nl.close()
    return wall, cpu


def measure(args) -> int:
    ten_layout = {f"{PREFIX}{i}": args.connections for i in range(args.namespaces)}
    one_layout = {f"{PREFIX}one": args.connections * args.namespaces}
    specs = {"one": f"{PREFIX}one", "empty": f"{PREFIX}empty", "ten": ",".join(ten_layout)}
    workers: list[Worker] = []
    scratch = tempfile.mkdtemp(prefix="netns-cost-")
    try:
        trees = [("this", TREE)]
        if args.against:
            trees.append((args.against, export_tree(args.against, scratch)))
        with Layout({f"{PREFIX}empty": 0}, False), contextlib.ExitStack() as both:
            workers = [Worker(name, tree) for name, tree in trees]
            sockets = 2 * args.connections + 1 + args.ipv6
            print(f"{args.namespaces} namespaces x {sockets} sockets vs 1 namespace x "
                  f"{2 * args.connections * args.namespaces + 1 + args.ipv6} sockets; "
                  f"median of {args.runs} interleaved rounds (+1 warm-up); "
                  + ("both layouts in the kernel at once" if args.together else
                     "each layout alone in the kernel's TCP hash"))
            if args.together:
                both.enter_context(Layout({**ten_layout, **one_layout}, args.ipv6))
            wall: dict = {}
            cpu: dict = {}
            walks: dict = {"one": [], "ten": []}
            kernel: dict = {"one": [], "ten": []}
            ss_times: dict = {"one": [], "ten": []}
            for round_no in range(args.runs + 1):
                order = ("ten", "one") if round_no % 2 else ("one", "ten")
                for layout in order:
                    with contextlib.ExitStack() as stack:
                        if not args.together:
                            stack.enter_context(Layout(
                                ten_layout if layout == "ten" else one_layout, args.ipv6))
                        cases = [(w, spec, processes) for w in workers
                                 for processes in (False, True)
                                 for spec in ((layout, "empty") if layout == "ten"
                                              else (layout,))]
                        shift = round_no % len(cases)
                        for worker, spec, processes in cases[shift:] + cases[:shift]:
                            w, c, _ = worker.run(specs[spec], processes)
                            if round_no:  # round 0 warms the imports and caches up
                                key = (worker.name, spec, processes)
                                wall.setdefault(key, []).append(w)
                                cpu.setdefault(key, []).append(c)
                        if round_no:
                            walks[layout].append(bare_dumps([f"/run/netns/{PREFIX}empty"]))
                            kernel[layout].append(bare_dumps(
                                [f"/run/netns/{n}" for n in specs[layout].split(",")]))
                            names = specs[layout].split(",")
                            ss_times[layout].append(_seconds(lambda n=names: [_ss(x)
                                                                              for x in n]))
            report(workers, wall, cpu, walks, kernel, ss_times)
    finally:
        for worker in workers:
            try:
                worker.close()
            except (OSError, subprocess.TimeoutExpired):
                worker.proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def report(workers, wall, cpu, walks, kernel, ss_times) -> None:
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"  {'':34} {'one':>9} {'ten':>9} {'ratio':>6}  {'cpu one':>8} {'cpu ten':>8}"
          f" {'ratio':>6}  {'1 listener':>10}")
    for worker in workers:
        for processes in (False, True):
            label = f"{worker.name}: " + ("with processes" if processes else "no processes")
            k1, k10, ke = ((worker.name, s, processes) for s in ("one", "ten", "empty"))
            print(f"  {label:34} {med[k1] * 1e3:7.1f}ms {med[k10] * 1e3:7.1f}ms "
                  f"{med[k10] / med[k1]:5.2f}x  {cpu_med[k1] * 1e3:6.1f}ms "
                  f"{cpu_med[k10] * 1e3:6.1f}ms {cpu_med[k10] / cpu_med[k1]:5.2f}x  "
                  f"{med[ke] * 1e3:8.1f}ms")
    one, ten = (statistics.median(ss_times[k]) for k in ("one", "ten"))
    print(f"  {'ss -tan -N, one run per namespace':34} {one * 1e3:7.1f}ms "
          f"{ten * 1e3:7.1f}ms {ten / one:5.2f}x")
    one, ten = (statistics.median(x[1] for x in kernel[k]) for k in ("one", "ten"))
    print(f"  {'kernel: bare TCP dumps, CPU':34} {one * 1e3:7.1f}ms {ten * 1e3:7.1f}ms "
          f"{ten / one:5.2f}x")
    for worker in workers:
        rest = [cpu_med[worker.name, k, False] - v for k, v in (("one", one), ("ten", ten))]
        print(f"  {worker.name + ': the rest (Python), CPU':34} {rest[0] * 1e3:7.1f}ms "
              f"{rest[1] * 1e3:7.1f}ms {rest[1] / rest[0]:5.2f}x")
    for layout in ("one", "ten"):
        w, c = (statistics.median(x[i] for x in walks[layout]) for i in (0, 1))
        print(f"  one TCP walk from a listener-only namespace, {layout} layout up: "
              f"{w * 1e3:.1f} ms wall, {c * 1e3:.1f} ms CPU")
    if len(workers) > 1:
        a, b = (w.name for w in workers)
        for processes in (False, True):
            what = "with processes" if processes else "no processes"
            print(f"  A/B ten, {what}: {a} {med[a, 'ten', processes] * 1e3:.1f} ms vs "
                  f"{b} {med[b, 'ten', processes] * 1e3:.1f} ms "
                  f"({med[a, 'ten', processes] / med[b, 'ten', processes]:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--connections", type=int, default=800,
                        help="connections per namespace (the one namespace holds N times)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--ipv6", action="store_true",
                        help="half of the connections over [::1] (two tables per namespace)")
    parser.add_argument("--together", action="store_true",
                        help="keep both layouts in the kernel at once (each walk then "
                        "crosses both)")
    parser.add_argument("--against", default="main",
                        help="also measure this git commit (default main; '' for none)")
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--isolated", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold is not None:
        hold(args.hold, args.ipv6)
        return 0
    if os.geteuid() != 0:
        print("netns_cost: needs root (ip netns add, unshare)", file=sys.stderr)
        return 2
    if not args.isolated:  # our own PID and mount namespace: see nothing of the others'
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc",
                               sys.executable, __file__, "--isolated", *sys.argv[1:]]
                              ).returncode
    # a /run/netns of our own too: `ip netns add` creates its files on the host's tmpfs
    # (only the mounts on them are private), and other runs would see them there
    os.makedirs("/run/netns", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "netns-cost", "/run/netns"], check=True)
    return measure(args)


if __name__ == "__main__":
    raise SystemExit(main())
