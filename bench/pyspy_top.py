"""Summarize py-spy's collapsed stacks (``--format raw``): where the samples went.

    python bench/pyspy_top.py bench/results/raw/<run>.idle.pyspy.txt [--top 25] [--filter longpoll_app]

Prints the functions with the most samples on top of the stack (self) and
anywhere in the stack (total), as a share of all samples.
"""

from __future__ import annotations

import argparse
import collections
import re


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default="", help="only frames whose text contains this (total)")
    args = parser.parse_args()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    n = 0
    for line in open(args.file):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        c = int(count)
        n += c
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread", "process")):
            threads[frames[0]] += c
        frames = [re.sub(r"\s+", " ", f) for f in frames]
        own[frames[-1]] += c
        for f in set(frames):
            if args.filter in f:
                total[f] += c
    print(f"{n} samples")
    print("\nthreads:")
    for t, c in threads.most_common(10):
        print(f"  {100 * c / n:5.1f}%  {t}")
    print("\nself:")
    for f, c in own.most_common(args.top):
        print(f"  {100 * c / n:5.1f}%  {f}")
    print("\ntotal:")
    for f, c in total.most_common(args.top):
        print(f"  {100 * c / n:5.1f}%  {f}")


if __name__ == "__main__":
    main()
