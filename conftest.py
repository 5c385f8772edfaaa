"""Root conftest: loads the infermatrix core plugin and the built-in plugins.

The list of built-in plugins lives in ``plugins/__init__.py`` (one line per model or
backend), so the worker processes and the command-line tools read the same list.
Outside packages need no line: they register through the ``infermatrix`` entry-point
group (see README).
"""

from plugins import BUILTIN_PLUGINS

pytest_plugins = ["infermatrix.pytest_plugin.plugin", *BUILTIN_PLUGINS]
