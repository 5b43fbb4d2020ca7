"""`python -m rlsd_harness.analysis.tuning report <study folder>... out=<folder>` (protocols.main)."""

from rlsd_harness.analysis.tuning.protocols import main

main()
