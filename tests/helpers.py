"""Shared constants of the project's tests."""

#: Fast timing for tests whose subject is not the figures themselves.
FAST = ["--min-rounds=3", "--min-time=0.01", "--max-time=0.05"]
