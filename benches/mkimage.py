#!/usr/bin/env python3
"""Write the deterministic raw test image used by benches/compare.sh.

The image is cut into extents of 64 KiB to 4 MiB (multiples of 64 KiB). Each extent is,
chosen with fixed weights from a fixed seed:

* a hole (never written, so the file stays sparse): about a third of the bytes;
* random bytes (incompressible): about a fifth;
* text-like data that compresses well but is never zero: the rest.

The same seed and size always give the same bytes, with any CPython 3.9 or newer.

Usage: mkimage.py OUTPUT [SIZE_MIB] [SEED]   (defaults: 1024 MiB, seed 1)
Prints the byte counts of each kind.
"""

import random
import sys

UNIT = 64 << 10

WORDS = (
    b"virtual disk image cluster refcount table l1 l2 snapshot backing chain "
    b"qcow2 vmdk raw sector offset guest host allocate discard flush write read "
)


TEXT_POOL = 8 << 20


def text_pool(rng):
    """8 MiB of numbered lines of words in shuffled orders (doubled, to slice across the end)."""
    words = WORDS.split()
    out = bytearray()
    line = 0
    while len(out) < TEXT_POOL:
        rng.shuffle(words)
        out += b"%08d " % line + b" ".join(words[:12]) + b"\n"
        line += 1
    pool = bytes(out[:TEXT_POOL])
    return pool + pool


def text_chunk(rng, pool, length):
    """Non-zero, compressible bytes: a slice of the pool at a random offset."""
    start = rng.randrange(TEXT_POOL)
    out = bytearray()
    while len(out) < length:
        n = min(length - len(out), TEXT_POOL)
        out += pool[start : start + n]
    return bytes(out)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    size = (int(sys.argv[2]) if len(sys.argv) > 2 else 1024) << 20
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    rng = random.Random(seed)
    pool = text_pool(rng)
    counts = {"hole": 0, "random": 0, "text": 0}
    # Weights in fifteenths: 5 hole (1/3), 3 random (1/5), 7 text.
    kinds = ["hole"] * 5 + ["random"] * 3 + ["text"] * 7
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            length = min(rng.randint(1, 64) * UNIT, size - pos)
            kind = rng.choice(kinds)
            if kind == "random":
                f.seek(pos)
                f.write(rng.randbytes(length))
            elif kind == "text":
                f.seek(pos)
                f.write(text_chunk(rng, pool, length))
            counts[kind] += length
            pos += length
    for kind, n in counts.items():
        print(f"{kind:>6}: {n / size:6.1%} ({n >> 20} MiB)")


if __name__ == "__main__":
    main()
