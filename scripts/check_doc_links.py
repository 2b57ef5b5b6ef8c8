#!/usr/bin/env python3
"""Check that every link from the crate's rustdoc to the book resolves, anchors included.

usage: python3 scripts/check_doc_links.py [DOC_DIR]   (default: target/doc)

Run after `scripts/docs.sh`, which builds the rustdoc into DOC_DIR and the book into
DOC_DIR/book, so a link such as `../../book/ch01_linear.html#initialisation` in a chapter
module's page opens the book's section. Relative depth depends on the page's place in the doc
tree (rustdoc puts an item's page in its module's folder, or in the folder it is re-exported
to), which is easy to get wrong by hand; this script is what keeps it right. Exit status 1
lists each broken link with the page it is on.
"""
import html
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
doc = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "doc"
crate = doc / "transformer_course"
if not (doc / "book" / "index.html").exists():
    sys.exit(f"check_doc_links: no book at {doc / 'book'}; run scripts/docs.sh first")

HREF = re.compile(r'href="([^"#]*book/[^"#]*\.html)(#[^"]*)?"')
ids: dict[Path, set[str]] = {}


def anchors(page: Path) -> set[str]:
    if page not in ids:
        ids[page] = set(re.findall(r'id="([^"]+)"', page.read_text(errors="replace")))
    return ids[page]


checked, broken = 0, []
for page in sorted(crate.rglob("*.html")):
    for target, fragment in HREF.findall(page.read_text(errors="replace")):
        if "://" in target:
            continue  # an absolute URL: not ours to resolve
        checked += 1
        dest = (page.parent / html.unescape(target)).resolve()
        if not dest.exists():
            broken.append(f"{page.relative_to(doc)}: {target} (no such page)")
        elif fragment and html.unescape(fragment[1:]) not in anchors(dest):
            broken.append(f"{page.relative_to(doc)}: {target}{fragment} (no such section)")

if broken:
    print(f"check_doc_links: {len(broken)} of {checked} book links are broken:")
    print("\n".join(sorted(set(broken))))
    sys.exit(1)
if checked == 0:
    sys.exit("check_doc_links: found no links to the book at all; is the doc tree right?")
print(f"check_doc_links: all {checked} links from rustdoc to the book resolve")
