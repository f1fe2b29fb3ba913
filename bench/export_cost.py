"""What does a Prometheus scrape of `sockstat export` cost? CPU per scrape, against
node_exporter's tcpstat collector on the same table.

    python bench/export_cost.py --sockets 30000                  # this tree alone
    python bench/export_cost.py --sockets 30000 --against ../main # A/B, interleaved

Run it in namespaces of its own (root), so nobody else's sockets are in the table:

    unshare --net --pid --fork --mount-proc bash -c \\
        'ip link set lo up; python bench/export_cost.py --sockets 30000 --runs 7'

It builds the table bench.py builds (bench.Table: ~70% ESTABLISHED pairs held by worker
processes, ~25% TIME_WAIT, some CLOSE_WAIT, listeners), then keeps one long-running
scraper per tree (`--against` adds trees: each runs this script with `--worker` and its
own PYTHONPATH) and, in interleaved rounds, asks each for one full collection (the
exporter's cache bypassed) while node_exporter (`--collector.disable-defaults
--collector.tcpstat`, when installed) serves `--ne-scrapes` scrapes. CPU is user +
system time: for a scraper its own and its waited children's (the owner scan's fork),
from getrusage; for node_exporter the growth of utime + stime in /proc/<pid>/stat (clock
ticks: many scrapes per round). Medians are printed, and the ratio to node_exporter.

With --against, the expositions of the trees are compared after each round (but for
what moves between two scrapes: the duration, kernel counters, TIME_WAIT): the same
table must give the same metrics.
A benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NE_PORT = 19100
MOVING = ("sockstat_scrape_duration_seconds", "sockstat_kernel_")


def _cpu() -> float:
    """User + system seconds of this process and its waited children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def worker() -> None:
    """One scraper, driven by lines on stdin: 'scrape' -> one JSON line on stdout."""
    from sockstat.exporter import Scraper, exposition, make_registry

    scraper = Scraper(cache_seconds=0.0)
    registry = make_registry(scraper)
    for line in sys.stdin:
        if line.strip() != "scrape":
            continue
        started, wall = _cpu(), time.monotonic()
        text = exposition(registry)
        cpu, wall = _cpu() - started, time.monotonic() - wall
        # what moves between two scrapes of an unchanged table: the duration, the
        # kernel's counters, TIME_WAIT (timers expire; node_exporter's scrapes add some)
        body = "\n".join(row for row in text.decode().splitlines()
                          if not row.startswith(MOVING) and "TIME_WAIT" not in row)
        print(json.dumps({"cpu": cpu, "wall": wall, "text": body}), flush=True)


class Scrapers:
    """A long-running worker per tree."""

    def __init__(self, trees: list[str]) -> None:
        self.procs = {}
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
            self.procs[tree] = subprocess.Popen(
                [sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, env=env, cwd="/")

    def scrape(self, tree: str) -> dict:
        proc = self.procs[tree]
        proc.stdin.write("scrape\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    def close(self) -> None:
        for proc in self.procs.values():
            proc.stdin.close()
            proc.wait(timeout=30)


def _ticks(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NodeExporter:
    """node_exporter with the tcpstat collector only, on loopback."""

    def __init__(self) -> None:
        binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        self.proc = None
        if binary is None:
            return
        self.proc = subprocess.Popen(
            [binary, "--collector.disable-defaults", "--collector.tcpstat",
             f"--web.listen-address=127.0.0.1:{NE_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.fetch()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("node_exporter did not start")

    def fetch(self) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{NE_PORT}/metrics", timeout=30) as r:
            return r.read()

    def scrape_cpu(self, scrapes: int) -> float:
        """CPU seconds per scrape, averaged over `scrapes`."""
        before = _ticks(self.proc.pid)
        for _ in range(scrapes):
            self.fetch()
        return (_ticks(self.proc.pid) - before) / scrapes

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--against", action="append", default=[],
                        help="another source tree to A/B against (repeatable)")
    parser.add_argument("--ne-scrapes", type=int, default=10,
                        help="node_exporter scrapes per round (its CPU is in clock ticks)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="scrapes per tree before timing (the detectors compare each "
                             "scrape with the previous one)")
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    sys.path.insert(0, str(REPO / "bench"))
    from bench import Table

    trees = [str(REPO), *args.against]
    with Table(args.sockets) as table:
        print(f"table: {table.total} sockets requested", flush=True)
        scrapers = Scrapers(trees)
        ne = NodeExporter()
        try:
            for _ in range(args.warmup):
                for tree in trees:
                    scrapers.scrape(tree)
            cpu: dict[str, list[float]] = {tree: [] for tree in trees}
            wall: dict[str, list[float]] = {tree: [] for tree in trees}
            ne_cpu: list[float] = []
            mismatches = 0
            for _ in range(args.runs):
                texts = {}
                for tree in trees:
                    got = scrapers.scrape(tree)
                    cpu[tree].append(got["cpu"])
                    wall[tree].append(got["wall"])
                    texts[tree] = got["text"]
                if ne.proc is not None:
                    ne_cpu.append(ne.scrape_cpu(args.ne_scrapes))
                if len(set(texts.values())) > 1:
                    mismatches += 1
                    _show_difference(texts)
        finally:
            scrapers.close()
            ne.close()
    ne_median = statistics.median(ne_cpu) if ne_cpu else None
    if ne_median is not None:
        print(f"node_exporter tcpstat: {ne_median * 1000:.1f} ms CPU per scrape "
              f"(median of {len(ne_cpu)} rounds of {args.ne_scrapes})")
    for tree in trees:
        median = statistics.median(cpu[tree])
        ratio = f", {median / ne_median:.1f}x node_exporter" if ne_median else ""
        print(f"{tree}: {median * 1000:.0f} ms CPU per scrape (wall "
              f"{statistics.median(wall[tree]) * 1000:.0f} ms; range "
              f"{min(cpu[tree]) * 1000:.0f}-{max(cpu[tree]) * 1000:.0f}){ratio}")
    if len(trees) > 1:
        print("expositions: " + ("identical in every round" if not mismatches
                                 else f"DIFFERENT in {mismatches} of {args.runs} rounds"))


def _show_difference(texts: dict[str, str]) -> None:
    import difflib

    (a, first), (b, second) = list(texts.items())[:2]
    diff = difflib.unified_diff(first.splitlines(), second.splitlines(), a, b, lineterm="",
                                n=0)
    print("\n".join(list(diff)[:40]), file=sys.stderr)


if __name__ == "__main__":
    main()
