#!/usr/bin/env python3
"""Run the course notebooks headlessly with the evcxr Rust kernel and fail on any error.

usage: python3 scripts/run_notebooks.py [--write | --check] [NOTEBOOK.ipynb ...]

Runs notebooks/*.ipynb in sorted order (or the ones given), one at a time, each in its own
folder (so `:dep transformer-course = { path = "..", default-features = false }` finds the crate). Exit status 1 names the
notebook and cell of the first failure: a cell error (e.g. a compile error) or a panic. A cell
tagged `raises-exception` may fail on purpose. `--write` saves the outputs into the .ipynb files.

`--check` then compares the fresh outputs with those saved in the .ipynb file; if they drift it
prints a diff naming the notebook and cells, runs the remaining notebooks, and exits 1. Compared
are normalised outputs: times and speeds in text (`12.3 s`, `45 ms`, `830 tok/s`, evcxr's
`Took 12ms`) become `<time>` / `<rate>`, SVG whitespace is ignored, PNG (any binary image) counts
only as present, and a cell tagged `varying-output` is compared only on the number and kinds of
its outputs; execution_count and metadata never. The comparison is pure Python, tested without a
kernel by `python3 -m unittest scripts/test_run_notebooks.py`.

Needs nbclient==0.11.0, nbformat==5.11.1 and the `rust` kernel (`evcxr_jupyter --install`).
"""
import argparse
import copy
import difflib
import json
import os
import re
import sys
import time
from pathlib import Path

try:
    import nbformat
    from nbclient import NotebookClient
except ImportError:  # checked in main(): the comparison functions and their tests need neither
    nbformat = NotebookClient = None

ROOT = Path(__file__).resolve().parent.parent
# evcxr reads init.evcxr from here: `:preserve_vars_on_panic 0` turns a panic into a cell error
# (by default evcxr catches it and the cell "succeeds"), `:cache 2000` keeps compiled code.
os.environ["EVCXR_CONFIG_DIR"] = str(ROOT / "scripts" / "evcxr")
# evcxr's cargo target dir. A fixed one lets warm runs reuse the builds of luminal and the crate
# (the default is a fresh temporary dir per kernel); it is also why notebooks run one at a time.
os.environ["EVCXR_TMPDIR"] = str(ROOT / "target" / "evcxr")
CELL_TIMEOUT = 1200  # seconds; the first `:dep` cell compiles luminal (~1.5 min cold)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CellFailed(Exception):
    def __init__(self, index: int, lines: list[str]):
        super().__init__(f"cell {index}")
        self.index, self.lines = index, lines


def check_cell(cell, cell_index, execute_reply):
    """nbclient hook, after each cell: raise CellFailed on an error reply or a panic message."""
    if "raises-exception" in cell.metadata.get("tags", []):
        return
    streams = "".join(o.text for o in cell.outputs if o.output_type == "stream")
    if execute_reply["content"]["status"] == "error" or "panicked at" in streams:
        # evcxr puts the compiler's or the panic's message in an `error` output.
        errors = ["\n".join(o.get("traceback") or [o.get("evalue", "")])
                  for o in cell.outputs if o.output_type == "error"]
        text = ANSI.sub("", "\n".join(errors + [streams]))
        raise CellFailed(cell_index, [line for line in text.splitlines() if line.strip()][:15])


# ---- Drift check (--check): pure functions on notebook dicts, no kernel needed -----------------
# A number directly followed by a time or throughput unit changes from run to run (machine load,
# warm caches), so it becomes a placeholder. Only these units: counts, sizes or a `2.1x` speed-up
# are results the notebook must reproduce. The number may have `,` or a (thin) space as thousands
# separator (`3,400 tokens/s`; the course writes `16 000`). The spaces around it go too: a
# right-aligned table column widens or narrows with the number. evcxr's `:timing` output
# (`<span ...>Took 12ms</span>`) matches as well.
TIME_UNITS = "ms|µs|μs|us|ns|min|s"  # µ is the micro sign, μ the Greek mu; both are in use
RATE_UNITS = "tokens/s|tok/s|steps/s|it/s"
TIMING = re.compile(
    r"(?P<before>[ \t]*)"
    r"(?<![\w.])(?:\d{1,3}(?:[,\u2009\u202f ]\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
    rf"[ \u00a0\u2009\u202f]?(?:(?P<rate>{RATE_UNITS})|(?P<time>{TIME_UNITS}))(?!\w)"
    r"(?P<after>[ \t]*)"
)
VARYING_TAG = "varying-output"
DIFF_LINES = 12  # diff lines shown per drifting cell
LINE_CHARS = 160  # characters shown of one diff line (SVG paths and HTML can be one huge line)


def _text(value) -> str:
    """A notebook text field: a string or, as stored on disk, a list of strings."""
    return "".join(value) if isinstance(value, list) else str(value)


def normalise_text(text: str) -> str:
    """Text as compared: without ANSI colours or \\r, each time or speed a placeholder."""
    def placeholder(m: re.Match) -> str:
        word = "<rate>" if m["rate"] else "<time>"
        return (" " if m["before"] else "") + word + (" " if m["after"] else "")
    return TIMING.sub(placeholder, ANSI.sub("", text).replace("\r\n", "\n"))


def normalise_data(mime: str, value) -> list[str]:
    """The lines compared for one MIME type of a display_data or execute_result output."""
    if mime == "image/svg+xml":
        # Whitespace around tags (indentation, line breaks) is not the picture, so it goes; inside
        # a tag or text a run of it counts as one space (`d="M 1 2"` must not equal `d="M 12"`).
        # One tag per line keeps the diff readable.
        svg = re.sub(r"\s*([<>])\s*", r"\1", " ".join(_text(value).split()))
        return svg.replace("><", ">\n<").splitlines()
    if mime.startswith("image/"):  # PNG and other binary images: compared only on presence
        return []
    if mime.endswith("json") and not isinstance(value, str):
        return json.dumps(value, indent=1, sort_keys=True).splitlines()
    return normalise_text(_text(value)).splitlines()


def _join_streams(outputs) -> list:
    # How the kernel splits its printing into messages is timing, not result: consecutive
    # stream outputs of one name are compared as one text.
    joined = []
    for out in outputs:
        last = joined[-1] if joined else {}
        if (out.get("output_type") == "stream" and last.get("output_type") == "stream"
                and last.get("name") == out.get("name")):
            joined[-1] = {**last, "text": _text(last.get("text", "")) + _text(out.get("text", ""))}
        else:
            joined.append(out)
    return joined


def normalise_outputs(outputs) -> list[tuple[str, list[str]]]:
    """A cell's outputs as (kind, lines): the kinds are the shape a `varying-output` cell keeps.

    kind is `stream stdout`, `error`, or the output type with its MIME types, e.g.
    `execute_result image/svg+xml text/plain`; execution_count and metadata are left out.
    """
    result = []
    for out in _join_streams(outputs):
        output_type = out.get("output_type", "?")
        if output_type == "stream":
            kind = f"stream {out.get('name', '')}"
            lines = normalise_text(_text(out.get("text", ""))).splitlines()
        elif output_type == "error":
            kind = output_type
            lines = [f"{out.get('ename', '')}: {out.get('evalue', '')}"]
            lines += normalise_text("\n".join(out.get("traceback", []))).splitlines()
        else:  # display_data, execute_result
            data = out.get("data", {})
            kind = " ".join([output_type, *sorted(data)])
            lines = []
            for mime in sorted(data):
                lines += [f"({mime})", *normalise_data(mime, data[mime])]
        result.append((kind, lines))
    return result


def compare_cell(saved, fresh) -> list[str]:
    """How a code cell's fresh outputs differ from its saved ones, as lines to print ([]: same)."""
    old = normalise_outputs(saved.get("outputs", []))
    new = normalise_outputs(fresh.get("outputs", []))
    if VARYING_TAG in saved.get("metadata", {}).get("tags", []):
        old_kinds, new_kinds = [kind for kind, _ in old], [kind for kind, _ in new]
        if old_kinds == new_kinds:
            return []
        return [f"a `{VARYING_TAG}` cell, so only the number and kinds of outputs are compared:",
                f"saved: {old_kinds}", f"fresh: {new_kinds}"]

    def listing(outputs):  # one text per cell for difflib; each output headed by its kind
        return [line for kind, lines in outputs for line in (f"[{kind}]", *lines)]

    old, new = listing(old), listing(new)
    if old == new:
        return []
    # [2:] drops the `--- saved`/`+++ fresh` header; the cell is named by the caller
    diff = list(difflib.unified_diff(old, new, "saved", "fresh", n=1, lineterm=""))[2:]
    shown = [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + " ..." for line in diff]
    more = len(shown) - DIFF_LINES
    return shown[:DIFF_LINES] + ([f"... ({more} more diff lines)"] if more > 0 else [])


def compare_notebooks(saved, fresh) -> list[tuple[int, list[str]]]:
    """(cell index, diff lines) for each code cell whose outputs drifted (same cells in both)."""
    drifts = []
    for index, (old, new) in enumerate(zip(saved.get("cells", []), fresh.get("cells", []))):
        if old.get("cell_type") == "code":
            diff = compare_cell(old, new)
            if diff:
                drifts.append((index, diff))
    return drifts


def format_drift(name, drifts: list[tuple[int, list[str]]], took: str = "") -> str:
    """The report printed for a notebook whose outputs drifted (took: its run time, if wanted)."""
    lines = [f"DRIFT  {name}{f' ({took})' if took else ''}: the outputs of {len(drifts)} cell(s) "
             "differ from the saved ones (0-based index, markdown cells counted; times and speeds "
             "shown as <time>, <rate>):"]
    for index, diff in drifts:
        lines += [f"  cell {index}:", *("      " + line for line in diff)]
    lines.append(f"    (if intended, save them: python3 scripts/run_notebooks.py --write {name})")
    return "\n".join(lines)


def run(path: Path, write: bool, check: bool) -> str:
    """Execute one notebook: "ok", "failed" (reported: a cell failed) or "drift" (reported)."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path  # for messages
    nb = nbformat.read(path, as_version=4)
    saved = copy.deepcopy(nb) if check else None  # execution replaces the outputs in nb
    current = {"cell": None}  # index of the running cell, for errors that are not CellFailed
    client = NotebookClient(
        nb,
        kernel_name="rust",
        timeout=CELL_TIMEOUT,
        record_timing=False,  # no timestamps in the saved notebooks: --write gives stable diffs
        resources={"metadata": {"path": str(path.parent)}},  # the kernel's working directory
        on_cell_start=lambda cell, cell_index: current.update(cell=cell_index),
        on_cell_executed=check_cell,
    )
    # The kernel's own output (cargo's build progress, evcxr notices) goes to a log file.
    log = Path(os.environ["EVCXR_TMPDIR"]) / f"{path.stem}.kernel.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        with open(log, "w") as log_file:
            client.execute(stdout=log_file, stderr=log_file)
    except CellFailed as e:
        print(f"FAILED {name}: cell {e.index} (0-based, markdown cells counted):", file=sys.stderr)
        print("    " + "\n    ".join(e.lines), file=sys.stderr)
        print(f"    (kernel log: {log})", file=sys.stderr)
        return "failed"
    except Exception as e:  # timeout, dead kernel, missing kernel spec, ...
        last_line = (str(e).strip().splitlines() or [""])[-1]
        print(f"FAILED {name}: cell {current['cell']}: {type(e).__name__}: {last_line}",
              file=sys.stderr)
        print(f"    (kernel log: {log})", file=sys.stderr)
        return "failed"
    seconds = f"{time.monotonic() - start:.0f} s"
    if check:
        drifts = compare_notebooks(saved, nb)
        if drifts:
            print(format_drift(name, drifts, seconds), file=sys.stderr)
            return "drift"
        seconds += ", outputs as saved"
    print(f"ok     {name} ({seconds})")
    if write:
        nbformat.write(nb, path)
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="save the outputs into the notebooks")
    mode.add_argument("--check", action="store_true",
                      help="fail if the outputs differ from the saved ones (timings normalised)")
    args = parser.parse_args()
    if NotebookClient is None:
        sys.exit("run_notebooks: needs `python3 -m pip install nbclient==0.11.0 nbformat==5.11.1` "
                 "(.ci/run installs them in a venv under ~/.cache/transformer-course)")
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    drifted = []
    # Stop at the first notebook that fails to run; drift is a finished run, so the others still
    # run and the report lists every drifted notebook at once.
    for path in paths:
        status = run(path.resolve(), args.write, args.check)
        if status == "drift":
            # evcxr now and then loses the last line a cell prints (seen on ch02, ch04, ch08 with
            # unchanged code): run once more. Real drift is deterministic and drifts again.
            print(f"run_notebooks: {path.name} drifted; running it once more", file=sys.stderr)
            status = run(path.resolve(), args.write, args.check)
        if status == "failed":
            return 1
        if status == "drift":
            drifted.append(path.name)
    if drifted:
        print(f"run_notebooks: {len(drifted)} of {len(paths)} notebook(s) drifted from their saved "
              f"outputs: {', '.join(drifted)}", file=sys.stderr)
        return 1
    print(f"run_notebooks: {len(paths)} notebook(s) ok"
          + (", outputs as saved" if args.check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
