"""The correctness gate: fp32 references, seeded weights, accuracy against the reference."""
