#!/usr/bin/env bash
# Build the book and check it properly. `mdbook build` exits 0 even when an include is missing,
# an anchor is wrong or some LaTeX fails to render, so this script also checks the build log,
# every include link, and that the HTML loads nothing (math CSS, fonts) from the network.
# Needs mdbook 0.5.4 and mdbook-katex 0.10.0 on PATH (.ci/run installs them). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check_book: FAILED: $*" >&2; exit 1; }
step() { echo "check_book: $*"; }

# (a) The crate's rlibs for the book's code blocks. They are built in the course's own target
#     folder (the dependencies are the ones `cargo test` already built: nothing is compiled
#     twice), but that folder holds rlibs of other builds too (other features, other hashes),
#     and `mdbook test -L target/debug/deps` would then fail with E0464; so link exactly this
#     build's artifacts, as cargo reports them, into a folder of their own.
step "building the crate for the doctests (cargo build --lib)"
deps=target/mdbook/book-deps
mkdir -p target/mdbook
cargo build --lib --message-format=json >target/mdbook/build.json ||
    fail "cargo build --lib"
rm -rf "$deps" && mkdir -p "$deps"
python3 - "$deps" target/mdbook/build.json <<'PY' || fail "could not collect the build's rlibs"
import json, os, sys
dest = sys.argv[1]
for line in open(sys.argv[2]):
    msg = json.loads(line) if line.startswith("{") else {}
    if msg.get("reason") == "compiler-artifact":
        for f in msg.get("filenames", []):
            if f.endswith((".rlib", ".so")):
                link = os.path.join(dest, os.path.basename(f))
                if not os.path.exists(link):
                    os.symlink(os.path.abspath(f), link)
PY

# (a2) The figures show the graphs the current code builds: regenerate them. Under .ci/run
#      (FIGURES_MUST_BE_COMMITTED=1) a difference from the committed files is a failure.
step "regenerating book/src/figures (cargo run --example figures)"
cargo run --quiet --example figures -- book/src/figures >/dev/null ||
    fail "cargo run --example figures"
if [ "${FIGURES_MUST_BE_COMMITTED:-0}" = 1 ] && git rev-parse --git-dir >/dev/null 2>&1; then
    stale=$(git status --porcelain -- book/src/figures)
    [ -z "$stale" ] || fail "book/src/figures is out of date with the code: run 'cargo run --example figures' and commit: $(head -n1 <<<"$stale")"
fi

# (b) Build, keeping the log; any ERROR or WARN line is a failure, except mdbook-katex's
#     harmless "was built against mdbook version ..." notice.
step "mdbook build book"
log=target/mdbook/build.log
test_log=target/mdbook/test.log
mdbook build book 2>&1 | tee "$log" || fail "mdbook build book exited with an error (log: $log)"
bad=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E 'ERROR|WARN' | grep -v 'was built against' || true)
[ -z "$bad" ] || fail "mdbook build logged: $(head -n1 <<<"$bad") (log: $log)"

# (c) Every {{#include}} / {{#rustdoc_include}} names an existing file, anchor and line range.
step "checking include links and anchors"
python3 scripts/check_anchors.py book/src || fail "broken include link(s) in book/src (listed above)"

# (d) Offline: the vendored KaTeX CSS is in the output and nothing loads math, CSS or fonts
#     from the network (a CDN link would render garbled math without a connection).
step "checking that the HTML is self-contained"
out=book/book
[ -f "$out/katex/katex.min.css" ] || fail "$out/katex/katex.min.css is missing (book/src/katex/ vendoring)"
grep -q 'katex/katex.min.css' "$out/index.html" || fail "index.html does not link katex/katex.min.css (book/theme/head.hbs)"
# External resources: <link href="http..">, <script src="http..">, CSS url(http..), or any URL
# that names KaTeX, MathJax or a CDN. (Plain <a href="https://..."> links in the text are fine.)
pattern='(<(link|script)[^>]*(href|src)="|url\(.?)https?://[^" )]*|https?://[^" ]*(katex|mathjax|cdn)[^" ]*'
external=$(grep -rhoiE "$pattern" --include='*.html' --include='*.css' "$out" | sort -u || true)
[ -z "$external" ] || fail "the book loads from the network: $(head -n1 <<<"$external")"

# (e) Compile and run the book's Rust code blocks against the crate built in (a).
step "mdbook test book"
if ! mdbook test book -L "$deps" 2>&1 | tee "$test_log"; then
    grep -q E0464 "$test_log" && fail "two builds of one crate in $deps (E0464): rm -rf target/mdbook and run again"
    fail "mdbook test book: a code block failed (log: $test_log)"
fi
step "ok"
