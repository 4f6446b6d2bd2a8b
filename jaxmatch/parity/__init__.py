"""Numerical parity against the authors' PyTorch code: `python -m jaxmatch.parity` (see core.py)."""
from jaxmatch.parity.core import (ADAPTERS, ParityError, ParityReport, Stage, StageResult, cli_run,
                                  compare_stage, format_table, get_adapter, import_reference,
                                  relative_error, run_parity)

__all__ = ["ADAPTERS", "ParityError", "ParityReport", "Stage", "StageResult", "cli_run", "compare_stage",
           "format_table", "get_adapter", "import_reference", "relative_error", "run_parity"]
