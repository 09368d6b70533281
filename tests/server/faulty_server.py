"""Run the real `modelserver` entry point with faults injected through seams these tests
own (production code reads no test switch):

- a prompt containing FAIL_MARKER fails in prefill the way a real engine error does, so
  the 424 path can be tested end to end;
- a prompt containing STICKY_MARKER fails in prefill and leaves the device unusable (every
  later device probe fails, as after a CUDA device-side assert), so the broken-engine path
  (/health 503, every request 503) can be tested end to end.

    python tests/server/faulty_server.py serve --model … (the `modelserver` arguments)
"""

from __future__ import annotations

import sys
import threading

from modelserver.cli import main
from modelserver.engine.core import Engine
from serverutil import FAIL_MARKER, STICKY_MARKER  # this file's folder is first on sys.path

_prefill = Engine._prefill
_probe_device = Engine._probe_device
_device_lost = threading.Event()


def _failing_prefill(self: Engine, p, budget: int) -> int:
    prompt = self.tokenizer.decode(p.req.prompt_ids)
    if FAIL_MARKER in prompt:
        raise RuntimeError("injected failure (tests/server/faulty_server.py)")
    if STICKY_MARKER in prompt:
        _device_lost.set()
        raise RuntimeError("injected device failure (tests/server/faulty_server.py)")
    return _prefill(self, p, budget)


def _failing_probe(self: Engine) -> None:
    if _device_lost.is_set():
        raise RuntimeError("injected: the device no longer answers")
    _probe_device(self)


Engine._prefill = _failing_prefill
Engine._probe_device = _failing_probe

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
