"""Stands for an installed framework whose shared library is missing (``test_faults.py``)."""

raise ImportError("libbroken_native.so.3: cannot open shared object file: No such file or directory")
