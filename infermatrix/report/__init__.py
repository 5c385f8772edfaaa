"""The report: one run's results merged (data), drawn (plots) and written as summary.md and index.html (write)."""
