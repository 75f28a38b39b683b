"""Benchmarks (never timed assertions in tests). ``python3 -m bench`` runs them all."""
