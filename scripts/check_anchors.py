#!/usr/bin/env python3
"""Check every {{#include}} / {{#rustdoc_include}} / {{#playground}} in the book's pages.

mdBook only logs a missing file and silently includes nothing for a wrong anchor or an
out-of-range line number, so this script checks, for each link in book/src/**/*.md:
  {{#include path}}            the file exists
  {{#include path:anchor}}     ... and contains `ANCHOR: anchor` followed by `ANCHOR_END: anchor`
  {{#include path:10:20}}      ... and has at least line 10 (any of `:N`, `::M`, `:N:`, `:N:M`)
Paths are relative to the page, as in mdBook. Escaped links (`\\{{#include ...}}`) are skipped.

usage: python3 scripts/check_anchors.py [book/src]      exit status 1 on any problem
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

LINK = re.compile(r"(?<!\\)\{\{\s*#(include|rustdoc_include|playground)\s+([^}\s]+)[^}]*\}\}")


def check_link(kind: str, page: Path, target: str) -> str | None:
    """Return a description of the problem with one link, or None if it is fine."""
    # Split as mdBook does: path, then the text up to the next ':' is a line number or an anchor.
    path, _, spec = target.partition(":")
    if kind == "playground":  # {{#playground}} takes a whole file, no range or anchor
        path, spec = target, ""
    file = page.parent / path
    if not file.is_file():
        return f"file not found: {path}"
    first = spec.split(":")[0]
    text = file.read_text(encoding="utf-8")
    if first == "" or first.isdigit():  # whole file or a line range
        n = len(text.splitlines())
        if first and int(first) > n:
            return f"{path} has {n} lines, the include starts at line {first}"
        return None
    # Anchors as mdBook finds them: `ANCHOR: name`, then the next `ANCHOR_END: name`.
    name = re.escape(first)
    start = re.search(rf"ANCHOR:\s*{name}(?![\w-])", text)
    if not start:
        return f"{path} has no 'ANCHOR: {first}'"
    if not re.compile(rf"ANCHOR_END:\s*{name}(?![\w-])").search(text, start.end()):
        return f"{path} has no 'ANCHOR_END: {first}' after 'ANCHOR: {first}'"
    return None


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "book/src")
    problems, links = [], 0
    for page in sorted(src.rglob("*.md")):
        for lineno, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for m in LINK.finditer(line):
                links += 1
                if problem := check_link(m.group(1), page, m.group(2)):
                    problems.append(f"{page}:{lineno}: {m.group(0)}: {problem}")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"check_anchors: {links} include links, {len(problems)} broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
