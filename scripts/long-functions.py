#!/usr/bin/env python3
"""List functions longer than a limit (default 80 lines) in the given Rust files, or in every
`.rs` file under the given directories (`long-functions.py host/src`).

Counts from the line with `fn name` to its closing brace at the same indentation; good
enough for rustfmt-formatted code. A declaration without a body (a trait's `fn x();`) is
skipped. Keeps every function of the host small enough to read at once."""
import os
import re
import sys

limit = 80
paths = sys.argv[1:]
if paths and paths[0].startswith("--limit="):
    limit = int(paths[0].split("=", 1)[1])
    paths = paths[1:]
files = []
for path in paths:
    if os.path.isdir(path):
        for root, _, names in sorted(os.walk(path)):
            files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".rs"))
    else:
        files.append(path)
found = False
for path in files:
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(pub(\([a-z]+\))? )?(async )?fn (\w+)", line)
        if not m:
            continue
        indent = m.group(1)
        # The signature ends at the body's `{` or, for a declaration, at `;`.
        k = i
        while k < len(lines) and "{" not in lines[k] and not lines[k].rstrip().endswith(";"):
            k += 1
        if k < len(lines) and "{" not in lines[k]:
            continue
        for j in range(i + 1, len(lines)):
            if lines[j] == indent + "}":
                n = j - i + 1
                if n > limit:
                    found = True
                    print(f"{path}:{i + 1}: fn {m.group(5)} is {n} lines")
                break
sys.exit(1 if found else 0)
