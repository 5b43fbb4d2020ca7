"""Analysis: the comparison matrix and its report (tables, plots), RLSD's credit picture, and the dry-run
plan of compute and memory."""
