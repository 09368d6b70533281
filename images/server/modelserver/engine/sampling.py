"""Per-request sampling parameters and state: the request's own generator (so that the same
seed gives the same text whatever the batch) and, when it uses a penalty, its token history
on the device. The step itself is sampled for all rows at once: engine/batch_sampling.py.
`Sampler.penalized` is the one-row form the forced tool-call path (core.py) still uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # batch_sampling imports this module
    from .batch_sampling import PenaltyState

# A torch generator takes a 64-bit unsigned seed: the routes refuse any other (a 422
# naming `seed`, not a 500 from inside the engine).
SEED_MAX = 2**64 - 1


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    # forced tool call: output constrained to a call of one of these functions
    tool_names: list[str] | None = None
    # score the prompt: each prompt token's log-probability (TGI's decoder_input_details)
    prompt_logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        # the request's token history on the device, made on its first step if it uses a
        # penalty (batch_sampling.penalties)
        self.penalty: PenaltyState | None = None
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device="cpu")
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()

    def penalized(self, logits: torch.Tensor, prompt: list[int],
                  generated: list[int]) -> torch.Tensor:
        """logits (vocab,) → float32 logits with the request's penalties applied."""
        p = self.params
        logits = logits.float()
        if p.repetition_penalty != 1.0:
            history = sorted(set(prompt) | set(generated))
            idx = torch.tensor(history, device=logits.device)
            vals = logits[idx]
            logits = logits.clone()
            logits[idx] = torch.where(
                vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
            )
        if (p.presence_penalty or p.frequency_penalty) and generated:
            # OpenAI: logits[t] -= presence * (count[t] > 0) + frequency * count[t]
            idx, counts = torch.unique(torch.tensor(generated, device=logits.device),
                                       return_counts=True)
            logits = logits.clone()
            logits[idx] -= p.presence_penalty + p.frequency_penalty * counts.float()
        return logits
