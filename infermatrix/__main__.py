"""``python -m infermatrix <command>``: see :mod:`infermatrix.cli`."""

from infermatrix.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
