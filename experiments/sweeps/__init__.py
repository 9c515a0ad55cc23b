"""Sweep files for `python -m experiments.sweep --sweep FILE`: each one's
`get_sweep()` returns the points."""
