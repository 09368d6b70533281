"""A prompt's prefill that spans scheduler iterations.

The scheduler (core.py `_admit`) spends at most --max-prefill-tokens-per-step prompt
tokens per iteration, then steps the running batch once: a burst of long prompts advances
chunk by chunk between decode steps instead of holding every running stream until the
whole burst is prefilled. A request keeps its own KV cache and offset here until its last
chunk; then it joins the batch exactly as a request prefilled at once does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import kv as kvops

if TYPE_CHECKING:
    from .core import Request


@dataclass
class Prefill:
    req: Request
    # created by the first chunk, not at admission: the prefix cache is looked up then,
    # after the requests admitted before it have stored their prompts
    cache: kvops.SlabCache | None = None
    done: int = 0  # prompt tokens whose KV is in `cache` (a reused prefix included)

    @property
    def remaining(self) -> int:
        return len(self.req.prompt_ids) - self.done


def chunk_end(p: Prefill, budget: int, chunk: int) -> int:
    """Where the next forward of `p` stops: at most `chunk` tokens (the memory bound of
    one forward, Engine.prefill_chunk) and at most what is left of this iteration's budget."""
    return p.done + min(p.remaining, budget, chunk)
