"""Sampling of a whole decode step on the device: next tokens and their log-probabilities
for every row at once, left on the device so that the engine copies them to the host once
per step (not twice per row) and feeds the next tokens back without a host round trip.

Same semantics as a request sampled alone (engine/sampling.py's SamplingParams): penalties
first (repetition: TGI's, over prompt and output; presence/frequency: OpenAI's, over the
output), the log-probability is log_softmax of the penalized logits at the chosen token;
greedy (argmax) at temperature 0 or top_k 1, else temperature → top-k → top-p and a draw.

The draw is an inverse CDF: each sampled row's uniform number comes from its own request's
CPU generator (host work, no device sync) and picks a token from the cumulative sum of its
sorted probabilities on the device. A row's token depends only on its logits and its own
generator, so the same seed gives the same text whatever the batch and the row order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .sampling import Sampler, SamplingParams

# the old per-row sampler's floor: temperature → 1e-5 keeps the division finite
MIN_TEMPERATURE = 1e-5


class PenaltyState:
    """One request's token history on the device, kept only when it uses a penalty:
    `seen` (prompt and output, for the repetition penalty) and `counts` (output only, for
    presence/frequency), updated from the device's next tokens without a host sync."""

    def __init__(self, prompt: Sequence[int], generated: Sequence[int], vocab: int,
                 device: torch.device) -> None:
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        history = list(prompt) + list(generated)
        if history:
            self.seen[torch.tensor(history, device=device)] = True
        if generated:
            ids = torch.tensor(list(generated), device=device)
            self.counts.index_add_(0, ids, torch.ones(len(ids), device=device))

    def add(self, token: torch.Tensor) -> None:
        """token: a (1,) device tensor, the row's sampled token."""
        self.seen.index_fill_(0, token, True)
        self.counts.index_add_(0, token, torch.ones(1, device=token.device))


def uses_penalty(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


@dataclass
class Penalties:
    """The penalized rows of one step: their indices in the batch and stacked state."""
    rows: torch.Tensor        # (P,) long
    host_rows: list[int]      # the same indices, on the host
    repetition: torch.Tensor  # (P, 1) float32, 1.0: none
    presence: torch.Tensor    # (P, 1) float32
    frequency: torch.Tensor   # (P, 1) float32
    seen: torch.Tensor        # (P, V) bool: prompt and output
    counts: torch.Tensor      # (P, V) float32: output


@dataclass
class StepParams:
    """The sampled (non-greedy) rows of one step, gathered into small tensors."""
    rows: torch.Tensor         # (S,) long: their indices in the batch
    temperature: torch.Tensor  # (S, 1) float32
    top_k: torch.Tensor        # (S, 1) long, 0: off
    top_p: torch.Tensor        # (S, 1) float32, ≥ 1: off
    uniform: torch.Tensor      # (S,) float32 in [0, 1), from each row's own generator


def penalize(logits: torch.Tensor, pen: Penalties | None) -> torch.Tensor:
    """logits (B, V) → float32 logits with each penalized row's penalties applied."""
    logits = logits.float()
    if pen is None:
        return logits
    rows = logits.index_select(0, pen.rows)
    rep = pen.repetition
    rows = torch.where(pen.seen, torch.where(rows > 0, rows / rep, rows * rep), rows)
    # OpenAI: logits[t] -= presence * (count[t] > 0) + frequency * count[t]
    rows = rows - (pen.presence * (pen.counts > 0).float() + pen.frequency * pen.counts)
    return logits.index_copy(0, pen.rows, rows)


def sample(logits: torch.Tensor, step: StepParams | None,
           pen: Penalties | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) on the device → (next tokens (B,) long, their log-probabilities (B,)
    float32), both on the device. Rows not in `step` are greedy."""
    logits = penalize(logits, pen)
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = torch.argmax(logits, dim=-1)
    if step is not None:
        tokens = tokens.index_copy(0, step.rows, _draw(logits.index_select(0, step.rows), step))
    return tokens, logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)


def _draw(logits: torch.Tensor, s: StepParams) -> torch.Tensor:
    """Temperature → top-k → top-p, then the token at each row's uniform in the CDF."""
    scaled = logits / s.temperature
    # stable: equal logits keep their vocabulary order, whatever the batch
    ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
    vocab = ordered.shape[-1]
    # top-k keeps every logit ≥ the k-th largest (ties included), as topk + mask did
    kth = ordered.gather(1, (s.top_k.clamp(1, vocab) - 1))
    ordered = ordered.masked_fill((s.top_k > 0) & (ordered < kth), float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    # top-p keeps the smallest prefix reaching top_p (the token crossing it included)
    drop = (torch.cumsum(probs, dim=-1) - probs > s.top_p) & (s.top_p > 0) & (s.top_p < 1)
    ordered = ordered.masked_fill(drop, float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    at = (s.uniform * cdf[:, -1]).unsqueeze(1)
    pos = torch.searchsorted(cdf, at, right=True)
    # rounding can land past the last kept token: clamp into the kept (non-zero) prefix
    kept = (probs > 0).sum(dim=-1, keepdim=True)
    pos = torch.minimum(pos, kept - 1)
    return order.gather(1, pos).squeeze(1)


def step_params(samplers: Sequence[Sampler], device: torch.device) -> StepParams | None:
    """The sampled rows' parameters, one uniform drawn from each row's own generator (on
    the host: a CPU generator needs no device sync); None when every row is greedy."""
    rows = [i for i, s in enumerate(samplers) if not s.params.greedy]
    if not rows:
        return None
    ps = [samplers[i].params for i in rows]
    uniform = torch.cat([torch.rand(1, generator=samplers[i].generator) for i in rows])
    col = dict(device=device)
    return StepParams(
        rows=torch.tensor(rows, dtype=torch.long, **col),
        temperature=torch.tensor([[max(p.temperature, MIN_TEMPERATURE)] for p in ps],
                                 dtype=torch.float32, **col),
        top_k=torch.tensor([[max(p.top_k, 0)] for p in ps], dtype=torch.long, **col),
        top_p=torch.tensor([[p.top_p] for p in ps], dtype=torch.float32, **col),
        uniform=uniform.to(device),
    )


def penalties(samplers: Sequence[Sampler], prompts: Sequence[Sequence[int]],
              generated: Sequence[Sequence[int]], vocab: int,
              device: torch.device) -> Penalties | None:
    """The penalized rows' state, made from the request's history on its first step."""
    rows = [i for i, s in enumerate(samplers) if uses_penalty(s.params)]
    if not rows:
        return None
    states = []
    for i in rows:
        s = samplers[i]
        if s.penalty is None:
            s.penalty = PenaltyState(prompts[i], generated[i], vocab, device)
        states.append(s.penalty)
    ps = [samplers[i].params for i in rows]
    col = dict(dtype=torch.float32, device=device)
    return Penalties(
        rows=torch.tensor(rows, dtype=torch.long, device=device), host_rows=rows,
        repetition=torch.tensor([[p.repetition_penalty] for p in ps], **col),
        presence=torch.tensor([[p.presence_penalty] for p in ps], **col),
        frequency=torch.tensor([[p.frequency_penalty] for p in ps], **col),
        seen=torch.stack([st.seen for st in states]),
        counts=torch.stack([st.counts for st in states]),
    )


def pick(logits: torch.Tensor, samplers: Sequence[Sampler], prompts: Sequence[Sequence[int]],
         generated: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One step for rows with these samplers (and histories): next tokens and their
    log-probabilities on the device; each penalized row's history takes its token."""
    device = logits.device
    pen = penalties(samplers, prompts, generated, logits.shape[-1], device)
    tokens, logprobs = sample(logits, step_params(samplers, device), pen)
    if pen is not None:
        for i in pen.host_rows:
            samplers[i].penalty.add(tokens[i:i + 1])
    return tokens, logprobs


def to_host(tokens: torch.Tensor, logprobs: torch.Tensor) -> tuple[list[int], list[float]]:
    """The step's one device→host transfer: token ids (< 2^53, exact in float64) and
    log-probabilities together."""
    both = torch.stack([tokens.double(), logprobs.double()]).tolist()
    return [int(t) for t in both[0]], both[1]
