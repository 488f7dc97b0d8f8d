"""Analysis of a comparison study: load its runs, fit AdamW's loss-vs-horizon, report speedups."""
