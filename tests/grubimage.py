#!/usr/bin/env python3
"""Makes the unmodified frontend's test inputs: GRUB's Xen PV image (Debian's grub-xen-bin,
`grub-mkimage -O x86_64-xen`) with an embedded configuration, and small disk images (FAT
through mtools, ext2 through mke2fs -d; neither needs root) holding one known file.

The configuration finds the disk holding the file through the store and blkfront (GRUB's
`search` walks every disk it found under `device/vbd`), prints the file with `cat`, and
halts (SCHEDOP_shutdown poweroff). Every line GRUB prints for the test starts with "grub:"
so that the QEMU case can find it in the console log; the file's content is the MARKER
line below, with a per-filesystem word, so that a case reading the wrong disk fails.

Usage:
  tests/grubimage.py image OUT            the GRUB image
  tests/grubimage.py disk OUT [--fs fat|ext2]
  tests/grubimage.py boottime LOG...      boot to halt in each serial log of an io-grub-* case
                                          (domain 0's "domains unpaused" line, attack=store or
                                          attack=blk, to the hypervisor's
                                          "domain 1 (...) ended: poweroff"), and their median
"""
import argparse
import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile

# Where Debian's grub-xen-bin puts the x86_64 Xen platform.
PLATFORM_DIR = "/usr/lib/grub/x86_64-xen"
# The file on the disk, and what the case expects GRUB to print from it.
FILE_NAME = "hello.txt"
MARKER = "grub read this line from its {fs} disk through blkfront"
# GRUB's modules: the commands the configuration runs and the filesystems it reads.
MODULES = ["echo", "cat", "ls", "search", "search_fs_file", "halt", "fat", "ext2", "part_msdos"]
# The embedded configuration (GRUB's rescue parser: one command a line, $variables).
CONFIG = """echo grub: embedded configuration running
ls
search --no-floppy --set=root --file /{file}
echo grub: found /{file} on $root
cat /{file}
echo grub: halting
halt
"""
# The disk: 2 MiB (4096 sectors of 512 bytes).
DISK_SECTORS = 4096


def need(tool, package):
    if shutil.which(tool) is None:
        sys.exit(f"grubimage: {tool} is missing: install the Debian package {package} (make deps does)")


def make_image(out):
    """GRUB's x86_64 Xen image, its configuration embedded."""
    need("grub-mkimage", "grub-common")
    if not os.path.isdir(PLATFORM_DIR):
        sys.exit(f"grubimage: {PLATFORM_DIR} is missing: install the Debian package grub-xen-bin (make deps does)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as cfg:
        cfg.write(CONFIG.format(file=FILE_NAME))
    try:
        subprocess.run(["grub-mkimage", "-O", "x86_64-xen", "-d", PLATFORM_DIR, "-o", out, "-c", cfg.name,
                        "-p", "/boot/grub"] + MODULES, check=True)
    finally:
        os.unlink(cfg.name)
    return out


def content(fs):
    return (MARKER.format(fs=fs) + "\n").encode()


def make_disk(out, fs):
    """A DISK_SECTORS-sector disk with one filesystem (no partition table) and FILE_NAME."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if os.path.exists(out):
        os.unlink(out)
    with open(out, "wb") as f:
        f.truncate(DISK_SECTORS * 512)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, FILE_NAME)
        with open(path, "wb") as f:
            f.write(content(fs))
        if fs == "fat":
            need("mformat", "mtools")
            # 2 heads of 32 sectors: a geometry mformat accepts for DISK_SECTORS sectors.
            subprocess.run(["mformat", "-i", out, "-T", str(DISK_SECTORS), "-h", "2", "-s", "32", "-v", "GRUBTEST", "::"],
                           check=True)
            subprocess.run(["mcopy", "-i", out, path, "::/" + FILE_NAME], check=True)
        elif fs == "ext2":
            need("mke2fs", "e2fsprogs")
            subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", "-d", tmp, out, str(DISK_SECTORS // 2)],
                           check=True)
        else:
            sys.exit(f"grubimage: unknown filesystem {fs}")
    return out


# Serial log lines: "[cpuN  seconds] text".
STAMP = re.compile(r"^\[cpu\d+\s+([0-9.]+)\] (.*)$")


def boot_to_halt_ms(log):
    """Milliseconds from domain 0 unpausing GRUB's domain to the hypervisor's line saying it
    powered off, in one serial log; None when either line is missing."""
    start = end = None
    with open(log, errors="replace") as f:
        for line in f:
            m = STAMP.match(line.strip())
            if not m:
                continue
            t, text = float(m.group(1)), m.group(2)
            if start is None and re.search(r"dom0: (store|blk): 1 domains unpaused", text):
                start = t
            elif start is not None and re.match(r"domain 1 \(.*\) ended: poweroff", text):
                end = t
                break
    return None if start is None or end is None else (end - start) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    image = sub.add_parser("image")
    image.add_argument("out")
    disk = sub.add_parser("disk")
    disk.add_argument("out")
    disk.add_argument("--fs", choices=["fat", "ext2"], default="fat")
    boottime = sub.add_parser("boottime")
    boottime.add_argument("logs", nargs="+")
    args = parser.parse_args()
    if args.what == "boottime":
        figures = [boot_to_halt_ms(log) for log in args.logs]
        for log, ms in zip(args.logs, figures):
            print(f"{log}: " + ("no boot-to-halt lines" if ms is None else f"{ms:.1f} ms"))
        got = [ms for ms in figures if ms is not None]
        if not got:
            sys.exit("grubimage: no log had both lines")
        print(f"boot to halt: median {statistics.median(got):.1f} ms of {len(got)} (min {min(got):.1f}, max {max(got):.1f})")
    elif args.what == "image":
        print(make_image(args.out))
    else:
        print(make_disk(args.out, args.fs))


if __name__ == "__main__":
    main()
