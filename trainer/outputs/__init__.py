"""Layer 4, what a run leaves on disk: the output folder's rules, whole-or-absent checkpoints and the run
report.
"""
