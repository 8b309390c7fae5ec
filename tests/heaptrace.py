#!/usr/bin/env python3
"""Which call sites' heap allocations outlived the domains: diffs two dumps of the heap
tracer (hypervisor/src/heaptrace.rs, built with `HV_FEATURES=heap-trace`) in a serial log and
names their call stacks with addr2line.

The hypervisor dumps its live allocations, grouped by call stack, each time domain 0 reads
the heap (`GetPhysInfo`): with `make fuzz` or `make cycles` the first dump is the reading
before the run and the last one the reading after it. For every call stack whose live count
or bytes differ, this prints the difference and the stack (the allocator's own frames left
out), largest first, then the total, which equals domain 0's `heap_delta_bytes` when every
allocation was traced (the dump's `dropped`, `site_full` and `unknown` figures say what was
not).

Usage:
  make cycles CYCLES=200 HV_FEATURES=heap-trace      (or make fuzz ...: build/fuzz.log)
  tests/heaptrace.py build/cycles.log [--from N] [--to M] [--elf target/.../hypervisor]
"""
import argparse
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "target/x86_64-unknown-none/release/hypervisor")
# Frames of the allocator and the standard library: the interesting caller is below them.
NOISE = ("alloc::", "core::", "<alloc::", "<core::", "__rust", "__rustc", "crossbeam_queue::",
         "hypervisor::heaptrace", "hypervisor::memory::")


def dumps(log):
    """{dump number: {call stack: (count, bytes)}} and each dump's header line."""
    found, headers, current = {}, {}, None
    with open(log, errors="replace") as f:
        for line in f:
            m = re.search(r"heaptrace: dump (\d+) begin(.*)", line)
            if m:
                current = int(m.group(1))
                found[current], headers[current] = {}, m.group(2).strip()
                continue
            if re.search(r"heaptrace: dump \d+ end", line):
                current = None
                continue
            m = re.search(r"heaptrace: \d+ n=(\d+) b=(\d+) (.*)", line)
            if m and current is not None:
                stack = tuple(x for x in m.group(3).split() if x != "0")
                count, size = found[current].get(stack, (0, 0))
                found[current][stack] = (count + int(m.group(1)), size + int(m.group(2)))
    return found, headers


def symbolize(elf, stack):
    """The stack's frames as `function (file:line)`, inlined frames included, noise left out."""
    if not stack:
        return ["(no stack: before the tracer could walk it, or off the CPU's kernel stack)"]
    # A return address points after the call: look up the byte before it.
    out = subprocess.run(["addr2line", "-f", "-C", "-i", "-e", elf] + [hex(int(a, 16) - 1) for a in stack],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    frames = []
    for function, place in zip(out[0::2], out[1::2]):
        if not function.startswith(NOISE):
            frames.append(f"{function}  ({os.path.relpath(place, ROOT) if place.startswith(ROOT) else place})")
    return frames


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--from", dest="first", type=int, default=None, help="dump number (default: the first)")
    parser.add_argument("--to", dest="last", type=int, default=None, help="dump number (default: the last)")
    parser.add_argument("--elf", default=KERNEL, help="the traced hypervisor that wrote the log")
    parser.add_argument("--frames", type=int, default=8, help="frames shown per stack")
    args = parser.parse_args()
    found, headers = dumps(args.log)
    if not found:
        raise SystemExit(f"{args.log}: no heaptrace dump (was the hypervisor built with HV_FEATURES=heap-trace?)")
    first = min(found) if args.first is None else args.first
    last = max(found) if args.last is None else args.last
    before, after = found[first], found[last]
    print(f"dump {first} ({headers[first]}) -> dump {last} ({headers[last]})")
    changes = []
    for stack in set(before) | set(after):
        (n0, b0), (n1, b1) = before.get(stack, (0, 0)), after.get(stack, (0, 0))
        if (n0, b0) != (n1, b1):
            changes.append((b1 - b0, n1 - n0, n0, b0, n1, b1, stack))
    changes.sort(key=lambda c: (-abs(c[0]), c[6]))
    for delta, dn, n0, b0, n1, b1, stack in changes:
        print(f"{delta:+8d} bytes {dn:+4d} live  ({n0} / {b0} -> {n1} / {b1})")
        for frame in symbolize(args.elf, stack)[:args.frames]:
            print(f"    {frame}")
    print(f"total {sum(c[0] for c in changes):+d} bytes")


if __name__ == "__main__":
    main()
