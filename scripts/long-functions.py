#!/usr/bin/env python3
"""List functions longer than a limit (default 80 lines) in the given Rust files.

Counts from the line with `fn name` to its closing brace at the same indentation; good
enough for rustfmt-formatted code. Used to keep the consume pipeline's stages small."""
import re
import sys

limit = 80
paths = sys.argv[1:]
if paths and paths[0].startswith("--limit="):
    limit = int(paths[0].split("=", 1)[1])
    paths = paths[1:]
found = False
for path in paths:
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(pub(\([a-z]+\))? )?(async )?fn (\w+)", line)
        if not m:
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j] == indent + "}":
                n = j - i + 1
                if n > limit:
                    found = True
                    print(f"{path}:{i + 1}: fn {m.group(5)} is {n} lines")
                break
sys.exit(1 if found else 0)
