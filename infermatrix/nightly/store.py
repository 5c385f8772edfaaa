"""The results store: a ``results`` branch of the project's own repository, checked out as a worktree.

Why a branch (as asv and github-action-benchmark keep theirs): the next night on any runner
finds it with one ``git fetch``; every night is a commit, so the history is versioned,
readable with ``git log``/``git show`` and never edited in place; a commit (and a push, per
ref) either happens whole or not at all; it needs no service or credential beyond the
repository's own token, and ``make nightly`` uses the same code on a local branch. The
alternatives fall short: Actions artifacts expire (90 days at most) and cannot be listed by
the next run without the API; ``actions/cache`` entries are evicted after 7 days unused and
cannot be updated under one key; a directory on the runner is lost with the runner and
invisible to people; an outside database or bucket needs credentials and a schema.

Layout of the branch::

    README.md
    nights/<UTC stamp>/          every night, passed or failed: each environment's result JSON,
                                 status.json (the night's status and why), night.md, paired.json
    baselines/<fingerprint>/     the accepted runs (``infermatrix.results.baselines``): the history

Never half-written: the worktree is reset to the branch's last commit before a night writes
(a night killed before its commit leaves nothing behind); the night's folder is written under
a temporary name, every JSON file read back, then renamed; the accepted baseline is written by
``baselines.accept`` (temporary file, fsync, link); then one commit holds them all. A failure
before the commit resets the worktree again. Only a night that passed adds a baseline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infermatrix.results import baselines

BRANCH = "results"
README = """# infermatrix results

Written by `python -m infermatrix nightly` (docs/nightly.md); do not edit by hand.

- `nights/<UTC stamp>/`: every night, passed or failed — each environment's result JSON,
  `status.json` (passed or failed, and why), `night.md`, `paired.json`.
- `baselines/<machine fingerprint>/`: the accepted runs, oldest first — the history the next
  night is judged against. Only a night without a failed environment, a failed case or a
  regression is accepted.
"""


class StoreError(RuntimeError):
    """The store cannot be read or written; the message names the git command and its output."""


@dataclasses.dataclass
class ResultsStore:
    #: the project's repository (any of its worktrees)
    repo: Path
    #: where the results branch is checked out (a git worktree of ``repo``)
    path: Path
    branch: str = BRANCH
    #: fetch from and push to this remote; None: a local branch only (``make nightly``)
    remote: str | None = None
    _identity: dict[str, str] | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def baselines_dir(self) -> Path:
        return self.path / "baselines"

    @property
    def nights_dir(self) -> Path:
        return self.path / "nights"

    # ---- git ------------------------------------------------------------------------------

    def _git(self, *args: str, cwd: Path | None = None, check: bool = True,
             input: str = "") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **self._fallback_identity()}
        try:
            proc = subprocess.run(["git", *args], cwd=cwd or self.repo, capture_output=True, text=True, env=env,
                                  timeout=600, input=input)
        except FileNotFoundError:
            raise StoreError("git is not installed: the results store is a git branch") from None
        except subprocess.TimeoutExpired:
            raise StoreError(f"git {' '.join(args)}: no answer within 10 minutes") from None
        if check and proc.returncode != 0:
            raise StoreError(f"git {' '.join(args)} failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    def _fallback_identity(self) -> dict[str, str]:
        """A committer where git has none configured (a fresh runner, a container): commits need one.
        A configured identity, or one in the environment, is left alone."""
        if self._identity is None:
            try:
                configured = subprocess.run(["git", "config", "user.email"], cwd=self.repo, capture_output=True,
                                            text=True, input="", timeout=60).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                configured = ""
            fallback = {"GIT_AUTHOR_NAME": "infermatrix nightly", "GIT_AUTHOR_EMAIL": "infermatrix-nightly@localhost",
                        "GIT_COMMITTER_NAME": "infermatrix nightly",
                        "GIT_COMMITTER_EMAIL": "infermatrix-nightly@localhost"}
            self._identity = {} if configured else {k: v for k, v in fallback.items() if k not in os.environ}
        return self._identity

    def _rev(self, ref: str) -> str | None:
        proc = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    # ---- open -----------------------------------------------------------------------------

    def open(self) -> None:
        """Bring the results branch up to date (from the remote, if any), check it out at
        ``path`` and drop anything a killed night left uncommitted there."""
        remote_head = None
        if self.remote:
            fetched = self._git("fetch", "--quiet", self.remote,
                                f"+refs/heads/{self.branch}:refs/remotes/{self.remote}/{self.branch}", check=False)
            if fetched.returncode == 0:
                remote_head = self._rev(f"refs/remotes/{self.remote}/{self.branch}")
            elif "couldn't find remote ref" not in (fetched.stderr + fetched.stdout).lower():
                raise StoreError(f"git fetch {self.remote} {self.branch} failed (exit {fetched.returncode}): "
                                 f"{(fetched.stderr or fetched.stdout).strip()[-800:]}")
        local_head = self._rev(f"refs/heads/{self.branch}")
        if local_head is None:
            self._git("branch", self.branch, remote_head or self._first_commit())
        elif remote_head and remote_head != local_head:
            if self._is_ancestor(local_head, remote_head):
                local_head = None  # behind: move it to the remote's (below, once checked out)
            elif not self._is_ancestor(remote_head, local_head):
                raise StoreError(f"the local branch {self.branch} ({local_head[:12]}) and {self.remote}/{self.branch} "
                                 f"({remote_head[:12]}) have diverged; nothing was changed — reconcile them by hand "
                                 "(the store is append-only: merging both is safe)")
            # ahead: an earlier night committed but could not push; the next push sends it
        self._checkout()
        if remote_head and local_head is None:
            self._git("reset", "--quiet", "--hard", remote_head, cwd=self.path)
        self._discard_uncommitted()

    def _first_commit(self) -> str:
        """The branch's first commit: a README on an empty history (an orphan branch)."""
        blob = self._git("hash-object", "-w", "--stdin", input=README).stdout.strip()
        tree = self._git("mktree", input=f"100644 blob {blob}\tREADME.md\n").stdout.strip()
        return self._git("commit-tree", tree, "-m", "results store: nights and accepted baselines").stdout.strip()

    def _is_ancestor(self, older: str, newer: str) -> bool:
        return self._git("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    def _checkout(self) -> None:
        if (self.path / ".git").exists():
            head = self._git("rev-parse", "--abbrev-ref", "HEAD", cwd=self.path, check=False).stdout.strip()
            if head != self.branch:
                raise StoreError(f"{self.path} is a checkout of {head or 'something else'}, not of the results branch "
                                 f"{self.branch}; give another --store directory")
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise StoreError(f"{self.path}: not empty and not a checkout of {self.branch}; give another --store "
                             "directory (nothing was changed)")
        self._git("worktree", "prune")  # a store directory removed by hand leaves its registration behind
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._git("worktree", "add", "--quiet", str(self.path), self.branch)

    def _discard_uncommitted(self) -> None:
        self._git("reset", "--quiet", "--hard", cwd=self.path)
        self._git("clean", "--quiet", "-d", "--force", "-x", cwd=self.path)

    # ---- read -----------------------------------------------------------------------------

    def history(self, machine: str) -> list[dict[str, Any]]:
        """The accepted runs of ``machine``, oldest first (``baselines.load_history``)."""
        return baselines.load_history(self.baselines_dir, machine)

    def head(self) -> str:
        return self._git("rev-parse", "HEAD", cwd=self.path).stdout.strip()

    # ---- write ----------------------------------------------------------------------------

    def record(self, stamp: str, files: Mapping[str, bytes], status: Mapping[str, Any],
               accept: dict[str, Any] | None) -> tuple[str, Path | None]:
        """Commit one night: ``files`` (name -> content) and ``status.json`` under
        ``nights/<stamp>/``, and ``accept`` (the merged run) as the newest baseline of its
        machine when given. Returns the commit and the accepted baseline's path."""
        night = self.nights_dir / stamp
        n = 0
        while night.exists():
            n += 1
            night = self.nights_dir / f"{stamp}-{n}"
        staging = self.nights_dir / f".{night.name}.tmp"
        before = self.head()
        try:
            staging.mkdir(parents=True)
            contents = {**files, "status.json": json.dumps(status, indent=1).encode()}
            for name, data in contents.items():
                target = staging / name
                with target.open("wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            for name in contents:
                if name.endswith(".json"):
                    json.loads((staging / name).read_bytes())  # read back: what is committed is whole
            os.rename(staging, night)
            accepted = None
            if accept is not None:
                accepted = baselines.accept(accept, self.baselines_dir, source=f"the night {stamp}")
                machine = baselines.fingerprint(accept["machine_info"])
                self.history(machine)  # read back the whole history with the new baseline in it
            self._git("add", "--all", "--", str(night.relative_to(self.path)), cwd=self.path)
            if accepted is not None:
                self._git("add", "--", str(accepted.relative_to(self.path)), cwd=self.path)
            verdict = "passed" if status.get("passed") else "failed"
            message = f"night {night.name}: {verdict}" + (", accepted as the newest baseline" if accepted else
                                                           ", not accepted")
            reasons = list(status.get("reasons") or [])
            body = "\n".join(f"- {r}" for r in reasons[:30])
            self._git("commit", "--quiet", "--no-verify", "-m", message + (f"\n\n{body}" if body else ""),
                      cwd=self.path)
        except (OSError, ValueError, baselines.BaselineError, StoreError) as exc:
            # nothing of this night stays: the branch is where it was
            self._git("reset", "--quiet", "--hard", before, cwd=self.path, check=False)
            self._git("clean", "--quiet", "-d", "--force", "-x", cwd=self.path, check=False)
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"the night {stamp} was not stored ({type(exc).__name__}: {exc}); the results branch "
                             f"is unchanged at {before[:12]}") from None
        return self.head(), accepted

    def push(self) -> None:
        """Send the branch to the remote (a no-op without one)."""
        if self.remote:
            self._git("push", "--quiet", self.remote, f"refs/heads/{self.branch}:refs/heads/{self.branch}")
