"""Measurement: timed rounds, throughput, paired interleaved timing, the machine's measured peak."""
