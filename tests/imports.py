#!/usr/bin/env python3
"""Import circles in the hypervisor image (style rule 11: no import circles inside a crate).

Reads every file of the image's module tree (from hypervisor/src/main.rs, the binary; the
library's files are a crate of their own and cannot reach the image), finds what each file
refers to in the image (`use crate::...`, `use super::...`, `crate::x::y` and `super::x`
in code, paths through a child module or a module imported by name), maps each reference to
the deepest file it names, computes the strongly connected components of that graph and
prints the circles (components of more than one file, or a file that names itself is not
counted). Fails (exit 1) when a circle is not in ALLOWED, or when an ALLOWED circle no
longer exists as listed (so the list shrinks as circles are broken, never silently).

  python3 tests/imports.py            check (part of `make clippy`)
  python3 tests/imports.py --graph    also print every file's edges
  python3 tests/imports.py --why A B  the references of file A that reach file B
  python3 tests/imports.py --selftest checks the checker on small made-up trees
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "hypervisor" / "src"

# The image's layers, bottom-up: a top-level module (a file, or a directory with its files)
# may name modules of its own layer or below, never above (so no circle can pass between
# layers). Every top-level module must be listed.
LAYERS = [
    ["arch", "time"],  # the hardware layer (vectors, per-CPU data, entry paths) and the clock
    ["logger"],
    ["bootinfo", "platform"],
    ["lapic", "heaptrace"],
    ["cpus", "pci"],
    ["memory"],
    ["tlb", "m2p"],
    ["domain"],  # the records: domains, vCPUs (carrying the scheduler's bvt::VcpuSched)
    ["sched"],  # runs vCPUs; what it needs from above comes through sched::Glue
    ["preempt"],
    ["pv"],  # the guest interface, and a domain's end (pv::teardown)
    ["idle", "interrupts"],
    ["traps", "selftest", "smpboot"],
    ["summary"],
    ["main"],  # the boot script
]

# Circles between files that still exist, each a set of files relative to hypervisor/src.
ALLOWED = [
    # A domain holds its vCPUs and each vCPU its domain: one record in two files.
    ["domain/mod.rs", "domain/vcpu.rs"],
    # pv's files call one another (hypercall dispatch and the handlers' shared helpers,
    # traps/emulate/debugreg/fpu, events/console, descriptors/ldt/mmu): not broken yet.
    [
        "pv/build.rs", "pv/console.rs", "pv/control.rs", "pv/debugreg.rs", "pv/descriptors.rs",
        "pv/emulate.rs", "pv/events.rs", "pv/fpu.rs", "pv/grants.rs", "pv/hypercall.rs", "pv/ldt.rs",
        "pv/lifecycle.rs", "pv/memop.rs", "pv/mmu.rs", "pv/physdev.rs", "pv/pirq.rs", "pv/ptwr.rs",
        "pv/teardown.rs", "pv/traps.rs", "pv/vcpuop.rs",
    ],
]


def strip(text):
    """The text without comments, string and char literals (kept line structure)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}') or a lifetime ('a): only the former is skipped.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Module:
    def __init__(self, path, name, parent):
        self.path = path  # the file
        self.name = name
        self.parent = parent
        self.children = {}  # name -> Module (file modules only)
        self.text = strip(path.read_text())

    def rel(self):
        return str(self.path.relative_to(SRC))


MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)


def load(path, name, parent):
    module = Module(path, name, parent)
    if path.name in ("main.rs", "lib.rs", "mod.rs"):
        here = path.parent
    else:
        here = path.parent / path.stem
    for child in MOD_DECL.findall(module.text):
        for candidate in (here / f"{child}.rs", here / child / "mod.rs"):
            if candidate.exists():
                module.children[child] = load(candidate, child, module)
                break
        else:
            sys.exit(f"imports.py: {module.rel()}: no file for `mod {child};`")
    return module


def walk(module):
    yield module
    for child in module.children.values():
        yield from walk(child)


def split_use_tree(tree):
    """`a::{b, c::{d as x, e}}` -> [['a','b'], ['a','c','d'], ['a','c','e']]."""
    tree = re.sub(r"\s+as\s+[A-Za-z_][A-Za-z0-9_]*", "", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def rec(prefix, s):
        k = s.find("{")
        if k < 0:
            out.append(prefix + [p for p in s.split("::") if p])
            return
        head = s[:k].rstrip(":")
        inner = s[k + 1:s.rindex("}")]
        parts, start, depth = [], 0, 0
        for m, c in enumerate(inner):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == "," and depth == 0:
                parts.append(inner[start:m])
                start = m + 1
        parts.append(inner[start:])
        base = prefix + [p for p in head.split("::") if p]
        for part in parts:
            if part:
                rec(base, part)

    rec([], tree)
    return out


USE = re.compile(r"\buse\s+([^;]+);")
PATH = re.compile(r"(?<![A-Za-z0-9_:])((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def resolve(module, segments, root, imported):
    """The file module a path from `module` names (the deepest file on it), or None."""
    if not segments:
        return None
    first, rest = segments[0], segments[1:]
    if first == "crate":
        at = root
    elif first == "super":
        at = module.parent
        while rest and rest[0] == "super":
            at, rest = at.parent, rest[1:]
    elif first == "self":
        at = module
    elif first in module.children:
        at, rest = module.children[first], rest
    elif first in imported:
        at = imported[first]
    else:
        return None  # an external crate, a type, a local
    if at is None:
        return None
    for seg in rest:
        if seg in at.children:
            at = at.children[seg]
        else:
            break
    return at


def references(module, root):
    """[(target module, the text that names it)] for one file."""
    text = module.text
    refs = []
    imported = {}
    uses = list(USE.finditer(text))
    for m in uses:
        for path in split_use_tree(m.group(1)):
            # `use crate::x::{self}` names x itself.
            path = [p for p in path if p != "self"] if path[-1:] == ["self"] else path
            target = resolve(module, path, root, {})
            if target is not None:
                refs.append((target, "use " + "::".join(path)))
                last = path[-1]
                if last in target.children:
                    target = target.children[last]
                if target.name == last:
                    imported[last] = target
    body = USE.sub(" ", text)
    for m in PATH.finditer(body):
        path = m.group(1).split("::")
        target = resolve(module, path, root, imported)
        if target is not None:
            refs.append((target, m.group(1)))
    return [(t, why) for t, why in refs if t is not module]


def sccs(nodes, edges):
    """Tarjan's strongly connected components."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def graph(src=None):
    global SRC
    if src is not None:
        SRC = Path(src)
    root = load(SRC / "main.rs", "crate", None)
    edges, why = {}, {}
    modules = list(walk(root))
    for module in modules:
        for target, text in references(module, root):
            edges.setdefault(module.rel(), set()).add(target.rel())
            why.setdefault((module.rel(), target.rel()), []).append(text)
    return [m.rel() for m in modules], edges, why


def circles_of(src):
    nodes, edges, _ = graph(src)
    return [c for c in sccs(nodes, edges) if len(c) > 1]


def selftest():
    """The checker finds a circle made of each kind of reference, and none without one."""
    import tempfile

    cases = [
        # (files, the circle expected, or None)
        ({"main.rs": "mod a;\nmod b;", "a.rs": "use crate::b::X;", "b.rs": "use crate::a::Y;"}, ["a.rs", "b.rs"]),
        ({"main.rs": "mod a;\nmod b;", "a.rs": "use crate::b::X;", "b.rs": "// crate::a::Y\nconst S: &str = \"crate::a::Y\";"}, None),
        ({"main.rs": "mod a;\nmod b;", "a.rs": "use crate::{b::{self as bee}, x};", "b.rs": "fn f() { crate::a::g() }"}, ["a.rs", "b.rs"]),
        ({"main.rs": "mod a;\nmod b;", "a.rs": "use crate::b;\nfn f() { b::g() }", "b.rs": "use super::a::Z;"}, ["a.rs", "b.rs"]),
        ({"main.rs": "mod d;\nmod e;", "d/mod.rs": "pub mod f;", "d/f.rs": "use crate::e::X;", "e.rs": "fn g() { crate::d::f::h() }"}, ["d/f.rs", "e.rs"]),
        ({"main.rs": "mod d;\nmod e;", "d/mod.rs": "pub mod f;", "d/f.rs": "use crate::e::X;", "e.rs": "fn g() { crate::dd::f::h() }"}, None),
    ]
    failed = 0
    for files, expected in cases:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_text(text)
            found = circles_of(tmp)
        want = [expected] if expected else []
        if found != want:
            print(f"imports selftest: {files}: found {found}, expected {want}")
            failed += 1
    # The layer check: a reference up fails, down passes, an unlisted module fails.
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in {"main.rs": "mod a;\nmod b;", "a.rs": "use crate::b::X;", "b.rs": ""}.items():
            (Path(tmp) / name).write_text(text)
        nodes, edges, why = graph(tmp)
        checks = [
            (layer_violations(nodes, edges, why, [["a"], ["b"], ["main"]]), 1),
            (layer_violations(nodes, edges, why, [["b"], ["a"], ["main"]]), 0),
            (layer_violations(nodes, edges, why, [["b"], ["a"]]), 1),
        ]
    for found, want in checks:
        cases.append(None)
        if len(found) != want:
            print(f"imports selftest: layers: {found}, expected {want} line(s)")
            failed += 1
    print(f"imports selftest: {len(cases) - failed}/{len(cases)} ok")
    return 1 if failed else 0


def layer_violations(nodes, edges, why, layers):
    """Lines naming each module missing from `layers` and each reference to a layer above."""
    top = lambda f: f.split("/")[0].removesuffix(".rs")
    layer = {m: i for i, group in enumerate(layers) for m in group}
    out = [f"UNPLACED module {m}: add it to LAYERS" for m in sorted({top(n) for n in nodes} - set(layer))]
    for a in sorted(edges):
        for b in sorted(edges[a]):
            la, lb = layer.get(top(a)), layer.get(top(b))
            if la is not None and lb is not None and lb > la:
                out.append(f"LAYER: {a} (layer {la}, {top(a)}) names {b} (layer {lb}, {top(b)}) above it: {sorted(set(why[(a, b)]))[:3]}")
    return out


def layers(nodes, edges):
    """Circles between top-level modules (a directory module is one node)."""
    top = lambda f: f.split("/")[0].removesuffix(".rs")
    tops = {top(n) for n in nodes}
    up = {}
    for a, bs in edges.items():
        for b in bs:
            if top(a) != top(b):
                up.setdefault(top(a), set()).add(top(b))
    return [c for c in sccs(tops, up) if len(c) > 1]


def main(argv):
    if "--selftest" in argv:
        return selftest()
    nodes, edges, why = graph()
    if "--why" in argv:
        a, b = argv[argv.index("--why") + 1:][:2]
        for text in why.get((a, b), []):
            print(text)
        return 0
    if "--graph" in argv:
        for v in sorted(nodes):
            print(f"{v}: {' '.join(sorted(edges.get(v, ())))}")
    circles = [c for c in sccs(nodes, edges) if len(c) > 1]
    allowed = [sorted(c) for c in ALLOWED]
    bad = 0
    total = sum(len(c) for c in circles)
    print(f"imports: {len(nodes)} files in the image, {len(circles)} circle(s) over {total} files")
    for c in layers(nodes, edges):
        print(f"  between modules ({len(c)}): {' '.join(c)}")
    for c in circles:
        ok = c in allowed
        print(f"  {'allowed' if ok else 'CIRCLE'} ({len(c)} files): {' '.join(c)}")
        bad += not ok
    for line in layer_violations(nodes, edges, why, LAYERS):
        print(f"  {line}")
        bad += 1
    for c in allowed:
        if c not in circles:
            print(f"  STALE allowed circle, no longer there as listed (shrink ALLOWED): {' '.join(c)}")
            bad += 1
    if bad:
        print("imports: FAILED (tests/imports.py --why A B shows what A takes from B)")
        return 1
    print(f"imports: ok ({len(LAYERS)} layers, bottom-up: {' < '.join('/'.join(g) for g in LAYERS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
