"""Where each thread of a profiled extraction spent its time: a summary of py-spy's collapsed stacks.

    python bench/profile_summary.py PROFILE [--thread NAME] [--top 15]

Reads what ``gpu_extract.py --profile`` wrote (py-spy ``record --threads --idle --nonblocking
--format raw``: one line per distinct stack, ``thread (tid): name;frame;...;frame count``). Prints
each thread name's samples (threads of one name, such as a pool's, added up), then for ``--thread``
(the engine's thread: featurebank-engine in gpu_extract.py since 2026-11-28's fourth session,
MainThread in the profiles before) the places where its samples ended: the
innermost Python frame and, where the profile has native frames (py-spy ``--native``), the
innermost named one below it, with their shares. A native frame in ``take_gil`` means the thread
was waiting for the GIL.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

PYTHON_FRAME = re.compile(r"\(.+\.py:\d+\)$")


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, samples) for each line of a collapsed-stacks file."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        name = thread.split(": ", 1)[1] if ": " in thread else thread
        stacks.append((name, frames, int(count)))
    return stacks


def place(frames: list[str]) -> str:
    """The innermost Python frame, and the innermost named native frame below it (addresses dropped)."""
    python = [i for i, frame in enumerate(frames) if PYTHON_FRAME.search(frame)]
    if not python:
        return "(no Python frame)"
    inner = python[-1]
    below = [f.split(" (")[0] for f in frames[inner + 1:] if not f.startswith("0x")]
    return frames[inner] + (f" > {below[-1][:100]}" if below else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--thread", default=None, help="[featurebank-engine where sampled, else MainThread]")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    stacks = parse(args.profile)
    threads = Counter()
    for name, _, count in stacks:
        threads[re.sub(r"_\d+$", "", name)] += count
    print("samples per thread name:", ", ".join(f"{name} {count}" for name, count in threads.most_common()))
    args.thread = args.thread or ("featurebank-engine" if "featurebank-engine" in threads else "MainThread")
    places = Counter()
    for name, frames, count in stacks:
        if re.sub(r"_\d+$", "", name) == args.thread:
            places[place(frames)] += count
    total = sum(places.values())
    print(f"{args.thread}: {total} samples; where they ended:")
    for where, count in places.most_common(args.top):
        print(f"  {count / total:6.1%}  {where}")


if __name__ == "__main__":
    main()
