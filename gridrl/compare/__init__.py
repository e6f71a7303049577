"""Batch comparison: every feeder × controller × seed over the days of a split, resumable.

One module per concern:

- :mod:`~gridrl.compare.config`: what a comparison is (:class:`CompareConfig`,
  :class:`ControllerSpec`) and everything that can be wrong with it;
- :mod:`~gridrl.compare.folder`: the results folder's layout and reading its tables back (what
  :mod:`gridrl.report` reads);
- :mod:`~gridrl.compare.cells`: one feeder × controller × seed, evaluated anywhere, written here;
- :mod:`~gridrl.compare.run`: running a comparison through a backend (:mod:`gridrl.cluster`),
  with progress, provenance and resume;
- :mod:`~gridrl.compare.summary`: the summary table, its formatting and its glossary.

Comparing writes no report; :func:`gridrl.pipeline.compare` (what ``gridrl compare`` runs) chains
the comparison and the report.
"""

from gridrl.compare.cells import (Cell, CellResult, cell_id, cell_parts, cells_of, evaluate_cell, merge_parts,
                                  run_cell, sunniest_day, tuned_cache_files, write_cell)
from gridrl.compare.config import (CompareConfig, CompareError, ControllerSpec, config_problems, env_changes,
                                   feeder_days, is_tuned, load_config, parse_controllers, run_feeder)
from gridrl.compare.folder import CELL_TABLES, cell_folder, collect
from gridrl.compare.run import CellProgress, CompareResult, prepare_out, run_cells, run_compare, step_cost
from gridrl.compare.summary import (SUMMARY_COLUMNS, SUMMARY_GLOSSARY, SUMMARY_LEGEND, TUNED_KEY, format_days,
                                    format_summary, summarize, summary_markdown)

__all__ = ["CELL_TABLES", "SUMMARY_COLUMNS", "SUMMARY_GLOSSARY", "SUMMARY_LEGEND", "TUNED_KEY", "Cell",
           "CellProgress", "CellResult", "CompareConfig", "CompareError", "CompareResult", "ControllerSpec",
           "cell_folder", "cell_id", "cell_parts", "cells_of", "collect", "config_problems", "env_changes",
           "evaluate_cell", "feeder_days", "format_days", "format_summary", "is_tuned", "load_config",
           "merge_parts", "parse_controllers", "prepare_out", "run_cell", "run_cells", "run_compare",
           "run_feeder", "step_cost", "summarize", "summary_markdown", "sunniest_day", "tuned_cache_files",
           "write_cell"]
