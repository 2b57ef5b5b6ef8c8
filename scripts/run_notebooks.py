#!/usr/bin/env python3
"""Run the course notebooks headlessly with the evcxr Rust kernel and fail on any error.

usage: python3 scripts/run_notebooks.py [--write] [NOTEBOOK.ipynb ...]

Runs notebooks/*.ipynb in sorted order (or the ones given), one at a time, each in its own
folder (so `:dep transformer-course = { path = "..", default-features = false }` finds the crate). Exit status 1 names the
notebook and cell of the first failure: a cell error (e.g. a compile error) or a panic. A cell
tagged `raises-exception` may fail on purpose. `--write` saves the outputs into the .ipynb files.

Needs nbclient==0.11.0, nbformat==5.11.1 and the `rust` kernel (`evcxr_jupyter --install`).
"""
import argparse
import os
import re
import sys
import time
from pathlib import Path

try:
    import nbformat
    from nbclient import NotebookClient
except ImportError:
    sys.exit("run_notebooks: needs `python3 -m pip install nbclient==0.11.0 nbformat==5.11.1` "
             "(.ci/run installs them in a venv under ~/.cache/transformer-course)")

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


def run(path: Path, write: bool) -> bool:
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path  # for messages
    nb = nbformat.read(path, as_version=4)
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
        return False
    except Exception as e:  # timeout, dead kernel, missing kernel spec, ...
        last_line = (str(e).strip().splitlines() or [""])[-1]
        print(f"FAILED {name}: cell {current['cell']}: {type(e).__name__}: {last_line}",
              file=sys.stderr)
        print(f"    (kernel log: {log})", file=sys.stderr)
        return False
    print(f"ok     {name} ({time.monotonic() - start:.0f} s)")
    if write:
        nbformat.write(nb, path)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--write", action="store_true", help="save the outputs into the notebooks")
    args = parser.parse_args()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:  # stop at the first failing notebook
        if not run(path.resolve(), args.write):
            return 1
    print(f"run_notebooks: {len(paths)} notebook(s) ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
