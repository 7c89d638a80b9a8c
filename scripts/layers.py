#!/usr/bin/env python3
"""The runtime's module picture: which module uses which, and the rules.

Usage: python3 scripts/layers.py [--graph] [SRC]   (SRC defaults to
storehaus-runtime/src)

Every `crate::a::b` path in a file (in `use` lines and inline paths) is an
edge from that file's module to the module it names. Each edge is lifted to
the two siblings under the deepest module both share (an edge from
`backend::redis::switch` to `backend::cluster::slots` is the sibling edge
`backend::redis` -> `backend::cluster`); an edge between a module and one
of its ancestors says nothing about layering and is left out. The check
fails (exit 1) when

- the sibling edges under any one parent form a cycle, or
- anything under `backend` uses `cache`, `store`, `outbox` or `wal`
  (backends sit below the cache: they report upward through what they
  own, and take the key grammar from below), or
- a module is longer than 500 lines before its `#[cfg(test)]` part, or
- a function outside tests is longer than 80 lines (signature to closing
  brace).

`--graph` also prints every sibling edge with the files behind it.
"""
import os
import re
import sys
from collections import defaultdict

MAX_LINES = 500
MAX_FN_LINES = 80
FN = re.compile(r"^(\s*)(?:pub(?:\([a-z]+\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+([a-z_0-9]+)")
BELOW_CACHE = {"backend"}
ABOVE_BACKEND = {"cache", "store", "outbox", "wal"}
PATH = re.compile(r"(?<!\$)\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"(?<!\$)\bcrate::((?:[a-z_][a-z0-9_]*::)*)\{([^}]*)\}", re.S)


def module_of(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def known_modules(src):
    mods = set()
    for root, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                mods.add(module_of(os.path.relpath(os.path.join(root, f), src)))
    return mods


def target(path, mods):
    """The longest prefix of `path` that is a module of the crate."""
    parts = tuple(path.split("::"))
    for n in range(len(parts), 0, -1):
        if parts[:n] in mods:
            return parts[:n]
    return None


def code_lines(text):
    """The file's lines up to its `#[cfg(test)]` module, comments dropped."""
    cut = text.find("#[cfg(test)]\nmod tests")
    body = text if cut < 0 else text[:cut]
    return body


def long_functions(body):
    """(name, first line, length) of each function longer than the limit:
    from its `fn` line to the line that closes it at the same indentation."""
    lines = body.split("\n")
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j].startswith(indent + "}") and not lines[j].startswith(indent + "} else"):
                if j - i + 1 > MAX_FN_LINES:
                    out.append((m.group(2), i + 1, j - i + 1))
                break
            if lines[j].strip() and not lines[j].startswith(indent + " ") and not lines[j].startswith(indent + "}") and j > i + 1 and FN.match(lines[j]):
                break  # a signature without a body (a trait method)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show = "--graph" in sys.argv
    src = args[0] if args else "storehaus-runtime/src"
    mods = known_modules(src)
    sibling = defaultdict(lambda: defaultdict(set))  # parent -> (a, b) -> files
    problems = []
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            full = os.path.join(root, f)
            rel = os.path.relpath(full, src)
            me = module_of(rel)
            with open(full, encoding="utf-8") as fh:
                text = fh.read()
            body = code_lines(text)
            n = body.count("\n")
            if n > MAX_LINES:
                problems.append(f"{rel}: {n} lines before its tests (limit {MAX_LINES})")
            for name, first, length in long_functions(body):
                problems.append(f"{rel}:{first}: fn {name} is {length} lines (limit {MAX_FN_LINES})")
            code = re.sub(r"//.*", "", body)  # doc links and comments say nothing of layering
            paths = set(PATH.findall(code))
            for prefix, group in USE_GROUP.findall(code):
                for item in group.replace("\n", " ").split(","):
                    item = item.strip().split(" as ")[0].split("::{")[0].strip()
                    if item:
                        paths.add(prefix + item)
            for p in paths:
                them = target(p, mods)
                if them is None or them == me:
                    continue
                common = 0
                while common < min(len(me), len(them)) and me[common] == them[common]:
                    common += 1
                if common == len(me) or common == len(them):
                    continue  # an ancestor or a descendant
                parent = "::".join(me[:common]) or "crate"
                edge = (me[common], them[common])
                sibling[parent][edge].add(rel)
                if me[0] in BELOW_CACHE and them[0] in ABOVE_BACKEND:
                    problems.append(f"{rel}: `{'::'.join(me)}` uses `crate::{p}` (a layer above it)")
    for parent, edges in sorted(sibling.items()):
        graph = defaultdict(set)
        for a, b in edges:
            graph[a].add(b)
        for comp in components(graph):
            inside = sorted((a, b) for (a, b) in edges if a in comp and b in comp)
            via = "; ".join(f"{a} -> {b} ({', '.join(sorted(edges[(a, b)]))})" for a, b in inside)
            problems.append(f"cycle under {parent} among {{{', '.join(sorted(comp))}}}: {via}")
        if show:
            for (a, b), files in sorted(edges.items()):
                print(f"{parent}: {a} -> {b}   [{', '.join(sorted(files))}]")
    for p in problems:
        print(p)
    print(f"layers: {len(mods)} modules, {len(problems)} problem(s)")
    return 1 if problems else 0


def components(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                out.append(set(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
