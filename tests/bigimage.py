#!/usr/bin/env python3
"""Makes a Xen PV64 guest image of any size from guest-bigimage: appends a loadable segment of
MIB MiB (a header page, then pages of a known pattern) plus bss, which the guest checks page by
page once booted (guests/bigimage/src/main.rs holds the same layout).

The new program header table (the old entries and the new PT_LOAD) goes right after the
original file, the segment after it, page aligned, so that --truncate cuts the segment and
leaves the headers whole: the hypervisor must then refuse the module by name ("segment N ...
runs past the end of the file"), not fault.

Usage: tests/bigimage.py IN OUT [--mib 80] [--bss-kib 1024] [--truncate-mib N]
"""
import argparse
import struct

# Must match guests/bigimage/src/main.rs.
VIRT_BASE = 0xFFFF_FFFF_8000_0000
BLOB_PADDR = 16 << 20
MAGIC = b"BIGIMAGE"
TAG = 0x5EED_0000_0000_0000
SEED = 0x1234_5678_9ABC_DEF1
PAGE = 4096
PT_LOAD = 1
PF_RW = 6
MASK = (1 << 64) - 1


def pattern(seed):
    """The 511 words after each page's tag: an xorshift64 stream from the seed."""
    state, words = seed, []
    for _ in range(PAGE // 8 - 1):
        state ^= (state << 13) & MASK
        state ^= state >> 7
        state ^= (state << 17) & MASK
        words.append(state)
    return struct.pack("<511Q", *words)


def align(n, to):
    return (n + to - 1) // to * to


def make(src, dst, mib=80, bss_kib=1024, truncate_mib=None):
    """Writes the image to dst; returns its size in bytes."""
    with open(src, "rb") as f:
        elf = bytearray(f.read())
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError(f"{src} is not an ELF64 file")
    (phoff,) = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    phdrs = bytes(elf[phoff:phoff + phentsize * phnum])
    pages = mib * 256
    bss = bss_kib * 1024
    header = struct.pack("<8sQQQ", MAGIC, pages, SEED, bss).ljust(PAGE, b"\0")
    words = pattern(SEED)
    body = b"".join(struct.pack("<Q", TAG ^ page) + words for page in range(1, pages))
    blob = header + body
    new_phoff = align(len(elf), 8)
    blob_offset = align(new_phoff + phentsize * (phnum + 1), PAGE)
    load = struct.pack("<IIQQQQQQ", PT_LOAD, PF_RW, blob_offset, VIRT_BASE + BLOB_PADDR, BLOB_PADDR,
                       len(blob), len(blob) + bss, PAGE)
    struct.pack_into("<Q", elf, 32, new_phoff)
    struct.pack_into("<H", elf, 56, phnum + 1)
    out = bytes(elf).ljust(new_phoff, b"\0") + phdrs + load
    out = out.ljust(blob_offset, b"\0") + blob
    if truncate_mib is not None:
        out = out[:truncate_mib << 20]
    with open(dst, "wb") as f:
        f.write(out)
    return len(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--mib", type=int, default=80)
    parser.add_argument("--bss-kib", type=int, default=1024)
    parser.add_argument("--truncate-mib", type=int)
    args = parser.parse_args()
    size = make(args.src, args.dst, args.mib, args.bss_kib, args.truncate_mib)
    print(f"{args.dst}: {size} bytes")


if __name__ == "__main__":
    main()
