#!/usr/bin/env python3
"""Runs the Xen Test Framework's pv64 tests on the hypervisor: `make xtf XTF=<dir>`.

XTF (https://github.com/andyhhp/xtf) is Xen's own suite of small PV guests; it is not
vendored here and CI does not fetch it. Build it once with `make -C <dir> -k -j2` (plain gcc
and make). Every `tests/*/test-pv64-*.cfg` is one run: the xl config names the image
(`kernel=`), its memory (`memory=`, MiB), its vCPUs (`vcpus=`) and, for variations such as
`test-pv64-pv-iopl~hypercall.cfg`, a command line (`cmdline=`). Each run boots the hypervisor
through GRUB as Xen runs XTF, with a domain 0 beside the test: guest-dom0 (boot module 0,
`plan=xtf`) creates the test's domain from the image (boot module 1) with the memory, vCPUs
and command line of its `.cfg`, waits for it to end and powers off (tests that name domain 0,
such as xsa-316's grant map from it, then meet one). The harness reads the console and takes
the test's verdict from its `Test result: SUCCESS|SKIP|FAILURE|ERROR` line; a run with no
verdict is REFUSED (the hypervisor would not build the image; the log says why), CRASH (the
guest died first: its `PANIC:` lines are kept in the log) or TIMEOUT.

Prints a table (test, result, seconds, and what Xen 4.17 gives under the same QEMU, from
issue 16) and writes build/xtf/results.json. Exits 0 when every test that passes or skips
under Xen passes or skips here.

Usage: tests/xtf.py --xtf <dir> [--only NAME ...] [--timeout 60] [--list]
"""
import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "target/x86_64-unknown-none/release/hypervisor")
DOM0 = os.path.join(ROOT, "target/x86_64-unknown-none/release/guest-dom0")
OUT = os.path.join(ROOT, "build/xtf")
RESULT = re.compile(r"Test result: (SUCCESS|SKIP|FAILURE|ERROR)")
# QEMU's memory beyond the guest's: the hypervisor, its heap and the frame table.
HOST_OVERHEAD_MIB = 256

# Xen 4.17 with a Linux domain 0 under this QEMU (7.2, TCG, -cpu max,-smap -smp 2), from issue
# 16: these pass or skip there; the others fail there, mostly on TCG quirks.
XEN_PASSES = {
    "cpuid", "example", "livepatch-priv-check", "msr", "rtm-check", "xsa-122", "xsa-182",
    "xsa-188", "xsa-193", "xsa-212", "xsa-221", "xsa-224", "xsa-227", "xsa-231", "xsa-232",
    "xsa-234", "xsa-255", "xsa-259", "xsa-279", "xsa-286", "xsa-296", "xsa-316", "xsa-317",
    "xsa-333", "xsa-7",
}
XEN_SKIPS = {"argo", "xsa-167", "xsa-444"}


def parse_cfg(path):
    """The keys of an xl config file that matter here (values unquoted)."""
    keys = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            keys[key] = value.strip('"')
    return keys


def runs(xtf_dir):
    """Every pv64 run: (name, image path, memory MiB, vCPUs, command line)."""
    found = []
    for cfg in sorted(glob.glob(os.path.join(xtf_dir, "tests", "*", "test-pv64-*.cfg"))):
        keys = parse_cfg(cfg)
        name = os.path.basename(cfg)[len("test-pv64-"):-len(".cfg")]
        image = keys.get("kernel", "")
        if not os.path.isabs(image) or not os.path.exists(image):
            # The config names the image where XTF was built; fall back to its own directory.
            image = os.path.join(os.path.dirname(cfg), os.path.basename(image))
        found.append((name, image, int(keys.get("memory", "128")), int(keys.get("vcpus", "1")),
                      keys.get("cmdline", "")))
    return found


def make_iso(name, image, mem_mib, vcpus, cmdline):
    """A GRUB ISO booting the hypervisor with domain 0 (module 0), which creates the test's
    domain from `image` (module 1) as the test's `.cfg` says."""
    root = os.path.join(OUT, "iso-" + name)
    boot_dir = os.path.join(root, "boot")
    os.makedirs(os.path.join(boot_dir, "grub"), exist_ok=True)
    subprocess.run(["cp", KERNEL, os.path.join(boot_dir, "hypervisor")], check=True)
    subprocess.run(["cp", DOM0, os.path.join(boot_dir, "dom0")], check=True)
    subprocess.run(["cp", image, os.path.join(boot_dir, "guest")], check=True)
    plan = f"plan=xtf mem_kib={mem_mib * 1024} vcpus={vcpus}" + (f" cmdline={cmdline}" if cmdline else "")
    dom0 = f"module2 /boot/dom0 name=dom0 expect=poweroff -- {plan}"
    # Module 1 is only an image for domain 0 to build from; its name names the domain.
    test = "module2 /boot/guest name=xtf"
    cfg = ("set timeout=0\nset default=0\nserial --unit=0 --speed=115200\n"
           "terminal_input serial\nterminal_output serial\nmenuentry \"xtf\" {\n"
           "  multiboot2 /boot/hypervisor dom0\n  " + dom0 + "\n  " + test + "\n  boot\n}\n")
    with open(os.path.join(boot_dir, "grub", "grub.cfg"), "w") as f:
        f.write(cfg)
    iso = root + ".iso"
    subprocess.run(["grub-mkrescue", "-o", iso, root], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return iso


def boot(iso, mem_mib, smp, timeout):
    """Boots the ISO; returns (verdict, seconds, console text)."""
    cmd = ["qemu-system-x86_64", "-M", "pc", "-machine", "accel=" + os.environ.get("ACCEL", "tcg"),
           "-m", f"{mem_mib + HOST_OVERHEAD_MIB}M", "-smp", str(smp), "-display", "none",
           "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-cpu", "max", "-cdrom", iso] + shlex.split(os.environ.get("QEMU_EXTRA", ""))
    start = time.monotonic()
    lines, verdict = [], None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            match = RESULT.search(line)
            if match and verdict is None:
                verdict = match.group(1)
            if time.monotonic() - start > timeout:
                lines.append(f"xtf: timed out after {timeout} s")
                break
    finally:
        proc.kill()
        proc.wait()
    text = "\n".join(lines)
    if verdict is None and ("not started" in text or "not created" in text):
        verdict = "REFUSED"
    elif verdict is None:
        verdict = "TIMEOUT" if time.monotonic() - start > timeout else "CRASH"
    return verdict, time.monotonic() - start, text


def xen_verdict(name):
    base = name.split("~", 1)[0]
    if base in XEN_PASSES:
        return "SUCCESS"
    if base in XEN_SKIPS:
        return "SKIP"
    return "FAILURE"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--xtf", required=True, help="a built XTF tree")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--smp", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    todo = [r for r in runs(args.xtf) if not args.only or r[0] in args.only]
    if not todo:
        print(f"xtf: no test-pv64-*.cfg under {args.xtf}/tests (build XTF first: make -C {args.xtf} -k -j2)")
        return 2
    if args.list:
        print("\n".join(r[0] for r in todo))
        return 0
    os.makedirs(OUT, exist_ok=True)
    results = []
    print(f"{'test':32} {'result':8} {'seconds':>7}  xen-4.17")
    for name, image, mem_mib, vcpus, cmdline in todo:
        iso = make_iso(name, image, mem_mib, vcpus, cmdline)
        verdict, seconds, text = boot(iso, mem_mib, args.smp, args.timeout)
        with open(os.path.join(OUT, name + ".log"), "w") as f:
            f.write(text + "\n")
        xen = xen_verdict(name)
        results.append({"test": name, "result": verdict, "seconds": round(seconds, 2), "xen_4_17": xen,
                        "memory_mib": mem_mib, "vcpus": vcpus, "cmdline": cmdline})
        print(f"{name:32} {verdict:8} {seconds:7.1f}  {xen}", flush=True)
    good = {"SUCCESS", "SKIP"}
    ok = sum(r["result"] in good for r in results)
    regressions = [r["test"] for r in results if r["xen_4_17"] in good and r["result"] not in good]
    beyond = [r["test"] for r in results if r["xen_4_17"] not in good and r["result"] in good]
    summary = {"runs": len(results), "pass_or_skip": ok, "worse_than_xen": regressions,
               "better_than_xen": beyond, "results": results}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"xtf: {ok} of {len(results)} pass or skip; {len(regressions)} where Xen passes or skips "
          f"do not{': ' + ', '.join(regressions) if regressions else ''}; {len(beyond)} pass beyond Xen")
    print(f"xtf: logs and results.json in {os.path.relpath(OUT, ROOT)}/")
    return 0 if not regressions else 1


if __name__ == "__main__":
    sys.exit(main())
