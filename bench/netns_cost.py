"""What does `--netns` cost? The same sockets in 10 namespaces versus in one.

    python bench/netns_cost.py                      # 10 namespaces x 300 connections
    python bench/netns_cost.py --namespaces 10 --connections 300 --runs 7

How (needs root, `ip`): namespaces `sockstat-bench-N` are made with `ip netns add`,
loopback up, and in each a holder process (this script re-run with --hold) opens C
connected pairs on 127.0.0.1:8080 (2C + 1 sockets). One more namespace holds the same
total in one place (namespaces x C connections). Then, in this process, the library's
collect() reads each layout `--runs` times, with and without naming processes:

    one   collect(netns="sockstat-bench-one")
    ten   collect(netns="sockstat-bench-0,...,sockstat-bench-9")

and the medians are printed with their ratio (the issue's target: ten <= 1.5 x one).
Everything made is removed in a finally, even on Ctrl-C. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import time

PREFIX = "sockstat-bench-"


def hold(connections: int) -> None:
    """Inside a namespace: C connected pairs, RST on exit (no TIME_WAIT left)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * connections + 64)),
                                                hard))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 8080))
    srv.listen(4096)
    held = [srv]
    for _ in range(connections):
        client = socket.create_connection(("127.0.0.1", 8080))
        conn, _ = srv.accept()
        held += [client, conn]
    print("ready", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _ss(namespace: str) -> None:
    subprocess.run(["ss", "-tan", "-N", namespace], stdout=subprocess.DEVNULL, check=True)


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--connections", type=int, default=300,
                        help="connections per namespace (the one namespace holds N times)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold is not None:
        hold(args.hold)
        return 0
    if os.geteuid() != 0:
        print("netns_cost: needs root (ip netns add)", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from sockstat.collect import collect
    from sockstat.query import Query

    layout = {f"{PREFIX}{i}": args.connections for i in range(args.namespaces)}
    layout[f"{PREFIX}one"] = args.connections * args.namespaces
    holders: list[subprocess.Popen] = []
    made: list[str] = []
    try:
        for name, connections in layout.items():
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
            holder = subprocess.Popen(
                ["ip", "netns", "exec", name, sys.executable, __file__, "--hold",
                 str(connections)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            holders.append(holder)
            if holder.stdout.readline().strip() != "ready":
                raise SystemExit(f"holder in {name} failed")
        ten = ",".join(n for n in layout if not n.endswith("one"))
        one = f"{PREFIX}one"
        print(f"{args.namespaces} namespaces x {2 * args.connections + 1} sockets vs "
              f"1 namespace x {2 * args.connections * args.namespaces + 1} sockets; "
              f"median of {args.runs}")
        rows = []
        for processes in (False, True):
            t_one = median_seconds(lambda p=processes: collect(Query(), netns=one, processes=p),
                                   args.runs)
            t_ten = median_seconds(lambda p=processes: collect(Query(), netns=ten, processes=p),
                                   args.runs)
            rows.append(("sockstat collect(), " + ("with processes" if processes
                                                   else "no processes"), t_one, t_ten))
        # the reference: ss in each namespace (`ss -N`), one after the other
        names = ten.split(",")
        t_one = median_seconds(lambda: _ss(one), args.runs)
        t_ten = median_seconds(lambda: [_ss(n) for n in names], args.runs)
        rows.append(("ss -tan -N (one process per namespace)", t_one, t_ten))
        for label, t_one, t_ten in rows:
            print(f"  {label:42} one: {t_one * 1000:7.1f} ms   ten: {t_ten * 1000:7.1f} ms"
                  f"   ratio {t_ten / t_one:.2f}x")
    finally:
        for holder in holders:
            try:
                holder.stdin.close()
                holder.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                holder.kill()
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
