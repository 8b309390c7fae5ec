#!/usr/bin/env python3
"""The fuzz run and the containment cycles (`make fuzz`, `make cycles`): boots the hypervisor
with domain 0 running `plan=fuzz` or `plan=cycles` (guests/dom0/src/fuzzplan.rs) beside the
stress, fuzzer and hostile guests, reads the serial console, and reports.

The run passes when QEMU exits 33 (every domain ended as expected, nothing leaked), domain 0
prints `fuzz: done ok` (or `cycles: done ok`: the good domains ran through, every CPU answered
every heartbeat, free memory and the heap are exactly as before), no fuzzer reported a `BUG`
(a hostile load or store that did not fault), and the console did not fall silent for
`--silence` seconds (a hang: the run fails and the last fuzzer seeds are printed).

Usage:
  tests/fuzz.py fuzz [--seconds 60] [--seed 1] [--smp 2] [--args 'avoid=... fuzzers=2'] [--hv-args '...']
  tests/fuzz.py cycles [--cycles 1000] [--seed 1] [--smp 2] [--args '...']
  tests/fuzz.py report <serial log>
"""
import argparse
import os
import queue
import re
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "target/x86_64-unknown-none/release/hypervisor")
GUESTS = os.path.join(ROOT, "target/x86_64-unknown-none/release")
BUILD = os.path.join(ROOT, "build")
SUCCESS_STATUS = 33

DOMAIN_LINE = re.compile(r"\(d(\d+)\) (.*)")
# A fuzzer's own BUG line (its console writes may print any bytes, its own strings included).
BUG_LINE = re.compile(r"^fuzz: BUG \w+ at 0x[0-9a-f]+ did not fault seed=\d+")
KEYS = re.compile(r"([a-z_0-9]+)=(\S+)")
SUMMARY = re.compile(r"summary: ([a-z0-9_.]+)=(\S*)")


def iso(name, dom0_line, hv_args):
    """Builds the ISO: domain 0 (module 0), the stress worker (1), the fuzzer (2), the hostile
    guest (3)."""
    root = os.path.join(BUILD, name)
    boot = os.path.join(root, "boot")
    os.makedirs(os.path.join(boot, "grub"), exist_ok=True)
    subprocess.run(["cp", KERNEL, os.path.join(boot, "hypervisor")], check=True)
    lines = [f"multiboot2 /boot/hypervisor dom0 {hv_args}".rstrip()]
    modules = [("guest-dom0", "-- " + dom0_line), ("guest-stress", ""), ("guest-fuzz", ""), ("guest-hostile", "")]
    for guest, line in modules:
        subprocess.run(["cp", os.path.join(GUESTS, guest), os.path.join(boot, guest)], check=True)
        lines.append(f"module2 /boot/{guest} {line}".rstrip())
    cfg = ("set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\n"
           "terminal_output serial\nmenuentry \"hypervisor\" {\n  " + "\n  ".join(lines) + "\n  boot\n}\n")
    with open(os.path.join(boot, "grub", "grub.cfg"), "w") as f:
        f.write(cfg)
    path = root + ".iso"
    subprocess.run(["grub-mkrescue", "-o", path, root], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return path


def boot(iso_path, smp, mem, timeout, silence, log_path, accel):
    """Runs QEMU; returns (exit status or None, lines, why it was stopped or None)."""
    cmd = ["qemu-system-x86_64", "-M", "pc", "-machine", f"accel={accel}", "-m", mem, "-smp", str(smp),
           "-display", "none", "-no-reboot", "-serial", "stdio",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-cpu", "host,-arch-capabilities" if accel.startswith("kvm") else "max", "-cdrom", iso_path]
    # A monitor socket, to read every CPU's registers when the machine hangs.
    monitor = os.path.join(BUILD, "fuzz-monitor.sock")
    if os.path.exists(monitor):
        os.unlink(monitor)
    cmd += ["-monitor", f"unix:{monitor},server,nowait"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lines = queue.Queue()

    def reader():
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    out, stopped = [], None
    start = last = time.monotonic()
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        while True:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                line = ""
            now = time.monotonic()
            if line is None:
                break
            if line:
                out.append(line)
                log.write(line + "\n")
                last = now
            if now - start > timeout:
                stopped = f"timed out after {timeout} s"
            elif now - last > silence:
                stopped = f"the console was silent for {silence} s (a hang)"
            if stopped:
                for sample in range(4):
                    log.write(f"harness: {stopped}; every CPU's registers (sample {sample}):\n{registers(monitor)}\n")
                    time.sleep(0.3)
                proc.kill()
                break
    try:
        status = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = None
    return (None if stopped else status), out, stopped


def registers(monitor):
    """`info registers -a` from the QEMU monitor (for a hang: where each CPU is stuck)."""
    import socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(monitor)
            s.sendall(b"info registers -a\n")
            data = b""
            end = time.monotonic() + 3
            while time.monotonic() < end:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                data += chunk
            return data.decode("utf-8", "replace")
    except OSError as error:
        return f"(no monitor: {error})"


def parse(lines):
    """The run's facts from the console."""
    facts = {"summary": {}, "fuzzers": {}, "spawned": [], "gone": [], "dom0": [], "unexpected": [], "bugs": [],
             "fatal": [], "selfcheck": [], "hv_fatal": [], "killed": []}
    for line in lines:
        # The hypervisor's own lines only: a guest's console lines are prefixed (dN).
        if "(d" not in line:
            for key, value in SUMMARY.findall(line):
                facts["summary"][key] = value
        if "(d" not in line and ("FATAL" in line or "panicked" in line):
            facts["hv_fatal"].append(line)
        if "killing it" in line:
            facts["killed"].append(line)
        m = DOMAIN_LINE.search(line)
        if not m:
            continue
        domid, text = int(m.group(1)), m.group(2)
        if domid == 0:
            if text.startswith(("fuzz:", "cycles:", "dom0:")):
                facts["dom0"].append(text)
                kv = dict(KEYS.findall(text))
                if " spawn " in text:
                    facts["spawned"].append(kv)
                if " gone " in text:
                    facts["gone"].append(kv)
            continue
        if "fuzz: " not in text:
            continue
        text = text[text.index("fuzz: "):]
        kv = dict(KEYS.findall(text))
        if "seed" in kv:
            seed = kv["seed"]
            entry = facts["fuzzers"].setdefault((domid, seed), {"calls": 0, "ending": None})
            if "calls" in kv and kv["calls"].isdigit():
                entry["calls"] = max(entry["calls"], int(kv["calls"]))
        if re.match(r"^fuzz: (UNEXPECTED seed=\d+|failsafe callback rsp=0x)", text):
            # After a call meant to end the domain, its consequence is expected.
            if "op=fatal_" not in text:
                facts["unexpected"].append((domid, text))
        elif BUG_LINE.match(text):
            facts["bugs"].append((domid, text))
        elif text.startswith("fuzz: fatal"):
            facts["fatal"].append((domid, text))
        # (A fuzzed console write may print the fuzzer's own format strings, which have the
        # words but not the values: a real report names a pfn or the call after it.)
        elif re.match(r"^fuzz: SELF-CHECK (pfn 0x[0-9a-f]+ now mapped by 0x|the program's code changed after [a-z_0-9]+ )", text):
            facts["selfcheck"].append((domid, text))
    return facts


def stays(summary):
    """The longest stay in the hypervisor (interrupts off) over all CPUs, overall and begun
    while an unprivileged domain ran: (us, cpu, cause)."""
    def longest(name, cause_key):
        best = (0, None, None)
        for key, value in summary.items():
            m = re.fullmatch(rf"sched\.cpu(\d+)\.{name}_us", key)
            if m and value.count("/") == 4:
                max_us = int(value.split("/")[4])
                if max_us >= best[0]:
                    best = (max_us, int(m.group(1)), summary.get(f"sched.cpu{m.group(1)}.{cause_key}"))
        return best
    return longest("in_hypervisor", "longest_stay"), longest("in_hypervisor_domu", "longest_domu_stay")


def report(facts, status, stopped, seconds, plan):
    """Prints the report; returns the list of problems (empty: pass)."""
    s = facts["summary"]
    calls = sum(f["calls"] for f in facts["fuzzers"].values())
    problems = []
    done = f"{plan}: done ok"
    if stopped:
        problems.append(stopped)
    elif status != SUCCESS_STATUS:
        problems.append(f"QEMU exit status {status}, expected {SUCCESS_STATUS}")
    if not any(line == done for line in facts["dom0"]):
        failed = [line for line in facts["dom0"] if "FAILED" in line or line.startswith("dom0:")]
        problems.append("domain 0 did not finish: " + ("; ".join(failed) if failed else "no verdict"))
    if s.get("run") not in (None, "pass"):
        problems.append(f"summary: run={s.get('run')}")
    for domid, text in facts["bugs"]:
        problems.append(f"d{domid}: {text}")
    for line in facts["hv_fatal"]:
        problems.append(f"hypervisor: {line}")
    overall, domu = stays(s)
    print(f"{plan}: report")
    print(f"  fuzzer calls in all: {calls}" + (f" ({calls / seconds:.0f} per second over {seconds} s)" if seconds else ""))
    print(f"  fuzzer domains: {len(facts['fuzzers'])} seen, {len(facts['spawned'])} spawned by domain 0;"
          f" ended by themselves {sum(1 for g in facts['gone'] if g.get('by') == 'self')},"
          f" destroyed {sum(1 for g in facts['gone'] if g.get('by') == 'destroyed')}")
    print(f"  hostile domains' endings (hypervisor): ended {s.get('domains.hostile_ended')},"
          f" killed {s.get('domains.hostile_killed')}, crashed {s.get('domains.hostile_crashed')};"
          f" fatal calls announced {len(facts['fatal'])}")
    print(f"  longest stay in the hypervisor with interrupts off: {overall[0]} us on cpu {overall[1]} ({overall[2]});"
          f" begun while an unprivileged domain ran: {domu[0]} us on cpu {domu[1]} ({domu[2]})")
    for line in facts["dom0"]:
        if " heartbeat " in line or " mem " in line or " leak " in line or " records " in line:
            print(f"  domain 0: {line}")
    print(f"  memory (hypervisor): free before {s.get('memory.free_before_kib')} KiB, after {s.get('memory.free_after_kib')} KiB,"
          f" leaked frames {s.get('memory.leaked_frames')}")
    for kind, items in (("unexpected fuzzer deaths", facts["unexpected"]), ("fuzzer self-checks", facts["selfcheck"])):
        if items:
            print(f"  {kind}: {len(items)}")
            for domid, text in items[:10]:
                print(f"    d{domid}: {text}")
    if facts["killed"]:
        print(f"  domains the hypervisor killed: {len(facts['killed'])} (first: {facts['killed'][0].split('WARN ')[-1][:140]})")
    if problems:
        last = [sp for sp in facts["spawned"]][-3:]
        print(f"{plan}: FAILED")
        for p in problems:
            print(f"  {p}")
        if last:
            print("  last fuzzer seeds: " + ", ".join(f"domid {sp.get('domid')} seed {sp.get('seed')}" for sp in last))
    else:
        print(f"{plan}: passed")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("fuzz", "cycles"):
        p = sub.add_parser(name)
        p.add_argument("--seconds", type=int, default=60)
        p.add_argument("--cycles", type=int, default=1000)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--smp", type=int, default=2)
        p.add_argument("--mem", default="512M")
        p.add_argument("--args", default="")
        p.add_argument("--hv-args", default="")
        p.add_argument("--silence", type=int, default=60)
        p.add_argument("--log", default=None)
    r = sub.add_parser("report")
    r.add_argument("log")
    r.add_argument("--plan", default="fuzz")
    r.add_argument("--seconds", type=int, default=0)
    args = parser.parse_args()
    if args.command == "report":
        with open(args.log) as f:
            lines = f.read().splitlines()
        return 1 if report(parse(lines), SUCCESS_STATUS, None, args.seconds, args.plan) else 0
    accel = os.environ.get("ACCEL", "tcg")
    if args.command == "fuzz":
        line = f"plan=fuzz seconds={args.seconds} seed={args.seed} {args.args}".strip()
        timeout = args.seconds * 3 + 180
        seconds = args.seconds
    else:
        line = f"plan=cycles cycles={args.cycles} seed={args.seed} {args.args}".strip()
        timeout = args.cycles + 300
        seconds = 0
    log = args.log or os.path.join(BUILD, f"{args.command}.log")
    path = iso(f"{args.command}-iso", line, args.hv_args)
    print(f"{args.command}: domain 0 runs `{line}` on {args.smp} CPUs (log: {log})", flush=True)
    status, lines, stopped = boot(path, args.smp, args.mem, timeout, args.silence, log, accel)
    problems = report(parse(lines), status, stopped, seconds, args.command)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
