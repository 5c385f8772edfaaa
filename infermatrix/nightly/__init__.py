"""The nightly: environment locks, reference environments, the paired comparison against the
last good state, the results store, and the pipeline that runs one night (docs/nightly.md).

- :mod:`~infermatrix.nightly.lock`: what re-creates the environment a run came from (exact
  package versions, Python, the commit), recorded in every run's JSON;
- :mod:`~infermatrix.nightly.refenv`: that environment re-created (a venv cached by the lock's
  hash, built in a temporary directory and renamed into place when complete);
- :mod:`~infermatrix.nightly.paired`: every case timed interleaved in the reference environment
  and the current one (``infermatrix.cli.ab``'s workers), judged on the paired ratio;
- :mod:`~infermatrix.nightly.store`: the results branch the next night reads its history from;
- :mod:`~infermatrix.nightly.night`: one night, environment after environment, its status and
  its record (``python -m infermatrix nightly``, ``make nightly``, the workflow).
"""
