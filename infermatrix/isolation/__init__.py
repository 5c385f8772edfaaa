"""Running cases in other processes: the worker pool, the worker, fresh-process runs, the A/B worker."""
