"""Numerical parity against the authors' PyTorch code: `python -m jaxmatch.parity` (see core.py)."""
from jaxmatch.parity.core import (ParityError, ParityReport, Stage, StageResult, cli_run,
                                  compare_stage, format_table, get_adapter, import_reference,
                                  relative_error, run_parity)
from jaxmatch.parity.sensitivity import GroupSensitivity, SensitivityReport, check_sensitivity

__all__ = ["GroupSensitivity", "ParityError", "ParityReport", "SensitivityReport", "Stage",
           "StageResult", "check_sensitivity", "cli_run", "compare_stage", "format_table", "get_adapter",
           "import_reference", "relative_error", "run_parity"]
