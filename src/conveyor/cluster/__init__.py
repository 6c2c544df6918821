"""Driving batch systems from outside, by their own commands (docs/slurm.md)."""
