"""``python -m infermatrix <command>``: every tool of the suite, one module per command.

The core's commands are listed in :data:`COMMANDS`; a plugin adds its own (a backend's
tools live beside the backend) through ``pytest_infermatrix_commands``.
"""

from __future__ import annotations

import importlib
import sys

from infermatrix.api.types import Command

#: The core's commands: name -> (module under infermatrix.cli, one line of help).
COMMANDS = {
    "compare": ("compare", "judge the last run against the runs before it (oldest first)"),
    "accept": ("accept", "store a run as the newest baseline of its machine"),
    "report": ("report", "merge a run's result files into summary.md and index.html"),
    "ab": ("ab", "paired A/B comparison of two sides (environments, checkouts, configurations)"),
    "nightly": ("nightly", "one night: every environment in turn, judged, stored on the results branch"),
    "nightly-paired": ("nightly_paired", "pair a run's cases against a re-creation of the accepted baseline's "
                       "environment"),
    "sidebyside": ("sidebyside", "backends side by side, interleaved in one process"),
    "overhead": ("overhead", "the harness's cost per timed call"),
    "detector": ("detector", "how well the verdicts detect changes on this machine"),
}


def plugin_commands() -> dict[str, Command]:
    """Commands the plugins add (the host imports the plugins: only when one is asked for)."""
    from infermatrix import host

    manager = host.plugin_manager()
    return {c.name: c for group in manager.hook.pytest_infermatrix_commands() for c in group}


def usage(extra: dict[str, Command]) -> str:
    lines = ["usage: python -m infermatrix <command> [options]   (<command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name:12s} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += [f"  {name:12s} {command.help}" for name, command in sorted(extra.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name, rest = (argv[0], argv[1:]) if argv else ("", [])
    if name in COMMANDS:
        module = importlib.import_module(f"infermatrix.cli.{COMMANDS[name][0]}")
        return int(module.main(rest))
    extra = plugin_commands()
    if name in extra:
        return int(extra[name].main(rest))
    if name in ("", "-h", "--help"):
        print(usage(extra))
        return 0 if name else 2
    print(f"python -m infermatrix: unknown command {name!r}\n\n{usage(extra)}", file=sys.stderr)
    return 2
