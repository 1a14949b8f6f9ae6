"""Benchmarks; each compares against a floor measured in the same run (see `make bench`)."""
