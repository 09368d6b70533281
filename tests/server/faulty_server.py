"""Run the real `modelserver` entry point with one fault injected through a seam these
tests own (production code reads no test switch): a prompt containing FAIL_MARKER fails
in prefill the way a real engine error does, so the 424 path can be tested end to end.

    python tests/server/faulty_server.py serve --model … (the `modelserver` arguments)
"""

from __future__ import annotations

import sys

from modelserver.cli import main
from modelserver.engine.core import Engine
from serverutil import FAIL_MARKER  # this file's folder is first on sys.path

_prefill = Engine._prefill


def _failing_prefill(self: Engine, req) -> None:
    if FAIL_MARKER in self.tokenizer.decode(req.prompt_ids):
        raise RuntimeError("injected failure (tests/server/faulty_server.py)")
    _prefill(self, req)


Engine._prefill = _failing_prefill

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
