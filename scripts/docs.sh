#!/usr/bin/env bash
# Build the API docs and the book side by side, so rustdoc's links to book sections work:
# rustdoc goes to target/doc, the book to target/doc/book. Then check those links.
# Open target/doc/transformer_course/index.html afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTDOCFLAGS="${RUSTDOCFLAGS:--D warnings}" cargo doc --no-deps
mdbook build book -d "$PWD/target/doc/book"
python3 scripts/check_doc_links.py target/doc
