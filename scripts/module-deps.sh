#!/usr/bin/env bash
# Which of the `ferry` library's modules import which, and whether any import cycle exists, at
# every level: top-level modules (`consume`, `plugin`, ...) and the modules inside them
# (`consume::settle`, `plugin::capability::publish`, ...), from `crate::`, `super::` and
# `self::` paths in host/src (the binary's main.rs and cli/ excluded).
#
# Rules of reading:
# - A path is the module it names: the longest prefix that is a module file.
# - A parent's `pub use self::child::...` re-exports are its facade, not a use of the child.
# - Test code is not read (everything from a file's first `#[cfg(test)]`): tests may reach
#   anywhere.
# Prints one "module -> dependencies" line per top-level module, then "no import cycle" and
# exits 0, or names the modules of each cycle and exits 1.
set -euo pipefail
cd "$(dirname "$0")/../host/src"

python3 - <<'PY'
import os, re, sys

def module_of(path):
    parts = path[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)

files = {}
for root, _, names in os.walk("."):
    for name in names:
        if not name.endswith(".rs"):
            continue
        path = os.path.relpath(os.path.join(root, name), ".")
        if path.startswith("cli/") or path in ("main.rs", "lib.rs"):
            continue
        files[module_of(path)] = path
modules = set(files)

def resolve(segments):
    """The longest prefix of `segments` that is a module, or None."""
    for n in range(len(segments), 0, -1):
        name = "::".join(segments[:n])
        if name in modules:
            return name
    return None

def expand(tree):
    """`a::{b, c::d}` -> [['a','b'], ['a','c','d']] (one level of braces is enough here)."""
    tree = tree.replace(" ", "")
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree.split("::")]
    head, body = m.group(1), m.group(2)
    out, depth, cur = [], 0, ""
    for ch in body + ",":
        if ch == "," and depth == 0:
            if cur:
                out.extend(expand(head + cur))
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    return out

edges = set()
for module, path in files.items():
    text = open(path).read()
    text = text.split("#[cfg(test)]")[0]
    text = re.sub(r"//[^\n]*", "", text)
    here = module.split("::")
    for m in re.finditer(r"(pub(\([a-z]+\))?\s+)?use\s+([^;]+);", text):
        public = m.group(1) is not None
        for segs in expand(m.group(3)):
            if segs[0] == "crate":
                target = resolve(segs[1:])
            elif segs[0] == "super":
                base = here[:]
                while segs and segs[0] == "super":
                    base = base[:-1]
                    segs = segs[1:]
                target = resolve(base + segs)
            elif segs[0] == "self":
                if public and len(segs) > 1 and resolve(here + segs[1:2]) is not None:
                    continue  # a facade re-export of a child
                target = resolve(here + segs[1:])
            else:
                continue
            if target and target != module:
                edges.add((module, target))
    # Inline paths outside `use` (`crate::keys::slot(..)`, `super::engine::X`).
    body = re.sub(r"(pub(\([a-z]+\))?\s+)?use\s+[^;]+;", "", text)
    for m in re.finditer(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)", body):
        segs = m.group(2).strip(":").split("::")
        if m.group(1) == "crate":
            target = resolve(segs)
        else:
            base = here[:-1]
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            target = resolve(base + segs)
        if target and target != module:
            edges.add((module, target))

def cycles(nodes, edges):
    graph = {n: sorted({b for a, b in edges if a == n}) for n in nodes}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for n in sorted(nodes):
        if n not in index:
            strong(n)
    return out

top = lambda m: m.split("::")[0]
top_nodes = sorted({top(m) for m in modules})
top_edges = {(top(a), top(b)) for a, b in edges if top(a) != top(b)}
for n in top_nodes:
    deps = " ".join(sorted({b for a, b in top_edges if a == n})) or "(nothing)"
    print(f"{n:<14} -> {deps}")

status = 0
# The runtime never depends on what is wired around it.
for outer in ("admin", "reload"):
    users = sorted({a for a, b in top_edges if b == outer})
    if users:
        print(f"runtime module(s) {' '.join(users)} import {outer}: only the binary and tests may wire it in")
        status = 1

# The throwaway servers live in the test kit (test-kit/), for the binary and tests only.
for name, path in sorted(files.items()):
    text = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
    if "ferry_test_kit" in text:
        print(f"{name} uses ferry_test_kit outside its tests: only the binary and tests may")
        status = 1

found = cycles(top_nodes, top_edges) + cycles(sorted(modules), edges)
if found:
    print("import cycle(s):")
    for comp in found:
        print("  " + " <-> ".join(comp))
    sys.exit(1)
print(f"no import cycle among {len(top_nodes)} top-level modules and {len(modules)} modules in all")
sys.exit(status)
PY
