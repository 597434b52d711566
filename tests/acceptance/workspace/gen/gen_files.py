#!/usr/bin/env python3
"""Writes deterministic pseudo-random files: gen_files.py SEED MIN_SIZE MAX_SIZE OUT...

File i gets a size spread log-uniformly between MIN_SIZE and MAX_SIZE (by a fixed
permutation of the indices) and content from random.Random(SEED, i), so the same
arguments always produce the same bytes.
"""
import random
import sys


def main():
    seed, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    outs = sys.argv[4:]
    n = len(outs)
    for i, path in enumerate(outs):
        frac = ((i * 7919) % n) / max(n - 1, 1)
        size = int(lo * (hi / lo) ** frac)
        rng = random.Random("%s/%d" % (seed, i))
        # Half random bytes, half a repeated line: some compressible content as well.
        head = rng.randbytes(size // 2)
        line = ("%s file %d of %d\n" % (seed, i, n)).encode()
        tail = (line * (size // len(line) + 1))[: size - len(head)]
        with open(path, "wb") as f:
            f.write(head)
            f.write(tail)


if __name__ == "__main__":
    main()
