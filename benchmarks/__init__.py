"""Benchmarks for edgeinfer; each script writes its report under benchmarks/results/."""
