"""Run the command line with a fault injected: `python tests/fault_injection.py SITE@FOLDER N -- ARGS...`.

SITE names a point inside the write of a checkpoint step, where this process SIGKILLs itself
the N-th time (counting from 1) a step of FOLDER (checkpoints, best or fit_partial) gets there:

  tmpdir    just after orbax created the step's temporary directory, before any array is written
  finalize  after every file of the step is written, just before the rename that publishes it

(Steps of different folders are written concurrently - the latest checkpoint asynchronously -,
so only the order within one folder is deterministic.)

SIGKILL cannot be caught: nothing of the process (no handler, no finally) runs after it,
which is what a kill -9, an OOM kill or a power cut leaves behind.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app
from orbax.checkpoint._src.path import atomicity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITES = {"tmpdir": "create", "finalize": "finalize"}


def install(site: str, folder: str, n: int) -> None:
    cls = atomicity.AtomicRenameTemporaryPath
    name = SITES[site]
    original = getattr(cls, name)
    count = {"calls": 0}

    async def patched(self, *args, **kwargs):
        if site == "tmpdir":
            result = await original(self, *args, **kwargs)
        # Orbax also renames each item (variables/, meta/, ...) of a step into place; count steps.
        final = self._final_path
        if final.name.isdigit() and final.parent.name == folder:
            count["calls"] += 1
        if count["calls"] == n and final.name.isdigit() and final.parent.name == folder:
            sys.stderr.write(f"fault_injection: SIGKILL at {site} #{n} ({self})\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if site == "tmpdir":
            return result
        return await original(self, *args, **kwargs)

    setattr(cls, name, patched)


def main() -> None:
    where, n, sep, *args = sys.argv[1:]
    site, _, folder = where.partition("@")
    assert sep == "--" and site in SITES and folder, __doc__
    install(site, folder, int(n))
    sys.path.insert(0, REPO)
    # Imported once the repository is on sys.path: this file runs as a script.
    from xray_flax import main as cli  # noqa: PLC0415

    sys.argv = ["xray_flax.main", *args]
    app.run(cli.main)


if __name__ == "__main__":
    main()
