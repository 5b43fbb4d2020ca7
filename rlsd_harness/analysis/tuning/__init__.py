"""Fair tuning before a study's test runs (an experiment's `tuning:` section), one concern per module:

- grid.py: the tuning section's keys (TUNING_KEYS) and its check (`tuning_grid`, also the grid protocol's
  points), one tuning run's overrides, and the grid protocol's picks (GRID_PICK_RULE) and their record:
  tuning.csv, tuning.md and picks.json, the machine-readable record `earlier_picks` reads an earlier study's
  picks from (rlsd-compare tuning_from=).
- search.py: Optuna's multi-fidelity search (tuning.mode optuna): each objective's search space, the settings,
  synchronous successive halving, the picks (OPTUNA_PICK_RULE).
- phase.py: rlsd-compare's tuning phase in tuning.mode optuna, trained on real runs.
- protocols.py: the tuning report across protocols (`python -m rlsd_harness.analysis.tuning report <study>...`).

rlsd-compare (its runs and its dry run) and rlsd-report check the tuning section (`tuning_grid`, and
`settings_of` in tuning.mode optuna) before any compute; the config layer below does not import this package.
"""

from rlsd_harness.analysis.tuning.grid import (
    GRID_PICK_RULE,
    TUNING_FILES,
    TUNING_KEYS,
    TuningPoint,
    changed_picks,
    earlier_picks,
    grid_edges,
    study_picks,
    tuning_grid,
    tuning_results,
    tuning_run_overrides,
    write_tuning,
)
from rlsd_harness.analysis.tuning.phase import run_tuning, unfinished_runs
from rlsd_harness.analysis.tuning.protocols import (
    Protocol,
    expected_max,
    expected_max_curve,
    load_protocol,
    main,
    plot_protocol,
    protocol_from_grid,
    protocol_from_optuna,
    report_markdown,
    sensitivity,
    side_by_side,
    write_tuning_report,
)
from rlsd_harness.analysis.tuning.search import (
    OPTUNA_KEYS,
    OPTUNA_PICK_RULE,
    Knob,
    Settings,
    Trial,
    edges,
    halving_keep,
    halving_pruner,
    is_optuna,
    open_studies,
    overrides_of,
    picks_of,
    plan_text,
    search_space,
    settings_of,
    trials_frame,
    tune,
)

__all__ = [
    "GRID_PICK_RULE", "OPTUNA_KEYS", "OPTUNA_PICK_RULE", "TUNING_FILES", "TUNING_KEYS", "Knob", "Protocol",
    "Settings", "Trial", "TuningPoint", "changed_picks", "earlier_picks", "edges", "expected_max",
    "expected_max_curve", "grid_edges", "halving_keep", "halving_pruner", "is_optuna", "load_protocol", "main",
    "open_studies", "overrides_of", "picks_of", "plan_text", "plot_protocol", "protocol_from_grid",
    "protocol_from_optuna", "report_markdown", "run_tuning", "search_space", "sensitivity", "settings_of",
    "side_by_side", "study_picks", "trials_frame", "tune", "tuning_grid", "tuning_results", "tuning_run_overrides",
    "unfinished_runs", "write_tuning", "write_tuning_report",
]
