"""What `sockstat demo all` costs on a busy host: the lab beside a big socket table.

    python bench/demo_cost.py --size 30000                  # this checkout
    python bench/demo_cost.py --size 30000 --against DIR    # A/B: DIR holds another
                                                            # checkout's `sockstat/`

Builds the same table as bench.py (ESTABLISHED pairs held by worker processes, TIME_WAIT
from short connections), then times `demo all --hold 0` (and `ss -tan`, the kernel's
walk of the table) in interleaved rounds, median of `--runs`. Run it inside a network
namespace of your own (see docs/performance.md) so that nobody else's sockets are in the
table. This is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import PY, Table, _tcp_count, time_interleaved  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_command(checkout: str, sibling: bool = False) -> list[str]:
    """`demo all --hold 0` run from `checkout` (a directory holding `sockstat/`)."""
    # the command's own entry (sockstat.__main__.run: start-up as the command has it;
    # cli.main() from a program leaves the interpreter as it is), cli.main() where a
    # checkout predates it
    code = (f"import sys; sys.path.insert(0, {checkout!r}); "
            "sys.argv = ['sockstat', 'demo', 'all', '--hold', '0']; "
            "import sockstat.__main__ as entry; from sockstat import cli; "
            "getattr(entry, 'run', None) and entry.run(); cli.main()")
    if sibling:
        return [PY, "-c", code]
    # through a shell, as a user runs it: the demo is then no sibling of the table's
    # worker processes, whose fds the owner scan would read as a holder's relatives
    return ["sh", "-c", '"$0" "$@"; exit $?', PY, "-c", code]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=30000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", help="another checkout's directory, for an A/B")
    parser.add_argument("--sibling", action="store_true",
                        help="run the demo as a sibling of the table's workers (their "
                             "fds are then read by the owner scan)")
    args = parser.parse_args()
    cmds = {"demo all (this checkout)": demo_command(HERE, args.sibling)}
    if args.against:
        cmds["demo all (--against)"] = demo_command(os.path.abspath(args.against),
                                                    args.sibling)
    cmds["ss -tan"] = ["ss", "-tan"]
    with Table(args.size):
        print(f"# table: {_tcp_count():,} TCP sockets", file=sys.stderr)
        for name, (seconds, mb) in time_interleaved(cmds, args.runs).items():
            print(f"{name:28s} {seconds:7.3f} s {mb:6.0f} MB")


if __name__ == "__main__":
    main()
