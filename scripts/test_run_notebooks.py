"""Unit tests of the drift check in run_notebooks.py: pure Python, no kernel, no nbclient needed.

usage: python3 -m unittest scripts/test_run_notebooks.py   (from the repository root)
"""
import copy
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_notebooks.py is not in a package
import run_notebooks as rn  # noqa: E402


def stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def code_cell(*outputs, tags=(), execution_count=1):
    metadata = {"tags": list(tags)} if tags else {}
    return {"cell_type": "code", "metadata": metadata, "source": "",
            "execution_count": execution_count, "outputs": list(outputs)}


def notebook(*cells):
    markdown = {"cell_type": "markdown", "metadata": {}, "source": "# a chapter"}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [markdown, *cells]}


def svg_result(svg):
    return {"output_type": "execute_result", "execution_count": 3, "metadata": {},
            "data": {"image/svg+xml": svg, "text/plain": "<svg>"}}


SAVED = notebook(
    code_cell(stream("y = shape [2, 2]\n[   1.0000    5.0000]\n"), stream("max diff 1.2e-7\n")),
    code_cell(stream("250 steps in 61.9 s with evaluations (12410 tokens/s overall)\n"),
              svg_result('<svg width="10">\n  <path d="M 1 2"/>\n</svg>\n')),
    code_cell(stream("loss 2.298096\n"), stream("a warning\n", "stderr"), tags=["varying-output"]),
)


class DriftCheck(unittest.TestCase):
    def drifts(self, change):
        fresh = copy.deepcopy(SAVED)
        change(fresh["cells"])
        return rn.compare_notebooks(SAVED, fresh)

    def test_identical_notebooks_pass(self):
        self.assertEqual(rn.compare_notebooks(SAVED, copy.deepcopy(SAVED)), [])

    def test_changed_number_in_a_normal_output_fails(self):
        def change(cells):
            cells[1]["outputs"][0]["text"] = "y = shape [2, 2]\n[   1.0000    5.0001]\n"
        drifts = self.drifts(change)
        self.assertEqual([index for index, _ in drifts], [1])
        diff = drifts[0][1]
        self.assertIn("-[   1.0000    5.0000]", diff)
        self.assertIn("+[   1.0000    5.0001]", diff)
        report = rn.format_drift("notebooks/ch01.ipynb", drifts)
        self.assertIn("notebooks/ch01.ipynb", report)
        self.assertIn("cell 1:", report)

    def test_changed_timing_passes(self):
        before = "compiled in 1.2 s; 45 ms per step, 0.8 µs per op, 3,400 tokens/s, 830 tok/s\n"
        after = "compiled in 3.4 s; 7 ms per step, 1.25 µs per op, 12,000 tokens/s, 91 tok/s\n"
        saved = notebook(code_cell(stream(before)))
        fresh = notebook(code_cell(stream(after)))
        self.assertEqual(rn.compare_notebooks(saved, fresh), [])
        self.assertEqual(self.drifts(lambda cells: cells[2]["outputs"][0].update(
            text="250 steps in 58.0 s with evaluations (13001 tokens/s overall)\n")), [])

    def test_right_aligned_timing_column_passes(self):
        saved = notebook(code_cell(stream("Linear   28    0.01 s    yes\n")))
        fresh = notebook(code_cell(stream("Linear   28   10.40 s    yes\n")))
        self.assertEqual(rn.compare_notebooks(saved, fresh), [])

    def test_numbers_without_a_time_unit_still_count(self):
        # a count before "steps", a size, a ratio like 2.1x: results, not timings
        for before, after in [("250 steps\n", "249 steps\n"), ("46 bytes\n", "47 bytes\n"),
                              ("2.1x faster\n", "2.4x faster\n"), ("ids 5\n", "ids 6\n")]:
            saved, fresh = notebook(code_cell(stream(before))), notebook(code_cell(stream(after)))
            self.assertNotEqual(rn.compare_notebooks(saved, fresh), [], before)

    def test_evcxr_timing_output_passes(self):
        def took(ms):  # what evcxr's `:timing` adds after each cell
            html = f'<span style="color: rgba(0,0,0,0.4);">Took {ms}ms</span>'
            return {"output_type": "execute_result", "execution_count": 1, "metadata": {},
                    "data": {"text/html": html}}
        saved = notebook(code_cell(stream("x\n"), took(812)))
        fresh = notebook(code_cell(stream("x\n"), took(1093)))
        self.assertEqual(rn.compare_notebooks(saved, fresh), [])

    def test_varying_output_cell_with_different_text_passes(self):
        def change(cells):
            cells[3]["outputs"] = [stream("loss 2.3\n"), stream("another warning\n", "stderr")]
        self.assertEqual(self.drifts(change), [])

    def test_varying_output_cell_with_a_missing_output_fails(self):
        drifts = self.drifts(lambda cells: cells[3]["outputs"].pop())
        self.assertEqual([index for index, _ in drifts], [3])
        self.assertIn("varying-output", drifts[0][1][0])

    def test_svg_whitespace_ignored_but_content_compared(self):
        def with_svg(svg):
            return lambda cells: cells[2]["outputs"][1]["data"].update({"image/svg+xml": svg})
        reindented = '<svg width="10">\n\n<path d="M 1 2"/></svg>'
        replotted = '<svg width="10">\n  <path d="M 1 3"/>\n</svg>\n'
        squeezed = '<svg width="10">\n  <path d="M 12"/>\n</svg>\n'  # whitespace in a tag counts
        self.assertEqual(self.drifts(with_svg(reindented)), [])
        self.assertEqual([index for index, _ in self.drifts(with_svg(replotted))], [2])
        self.assertEqual([index for index, _ in self.drifts(with_svg(squeezed))], [2])

    def test_png_compared_on_presence_only(self):
        def png(data):
            return {"output_type": "display_data", "metadata": {}, "data": {"image/png": data}}
        saved = notebook(code_cell(png("iVBORw0KGgoAAA")))
        other_png = notebook(code_cell(png("iVBORw0KGgoBBB")))
        self.assertEqual(rn.compare_notebooks(saved, other_png), [])
        self.assertNotEqual(rn.compare_notebooks(saved, notebook(code_cell())), [])

    def test_execution_count_metadata_and_stream_splitting_ignored(self):
        saved = notebook(code_cell(stream("a\n"), stream("b\n"), execution_count=4))
        fresh = notebook(code_cell(stream("a\nb\n"), execution_count=9))
        fresh["cells"][1]["metadata"]["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
        self.assertEqual(rn.compare_notebooks(saved, fresh), [])


if __name__ == "__main__":
    unittest.main()
