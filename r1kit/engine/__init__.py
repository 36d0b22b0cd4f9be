"""Engine: batched KV-cache generation with sampling, stops, budget forcing, MTP drafts and streaming.

    from r1kit.engine import Engine, SamplingParams
    outs = Engine(model, tokenizer).generate(prompts, SamplingParams(n=4, temperature=0.7))

One loop serves `generate` and `stream`. A call left-pads the distinct prompts into one batch,
prefills each prompt once and fans its KV cache out to its `n` samples. Every step then feeds one
token per row (two with MTP speculative decoding), samples on the device, and copies a few
integers per row to the host: the new tokens and a finish code. `Engine.session()` returns an
`EngineSession` for continuous batching (the server): requests are prefilled on arrival and their
cache rows merged into the running batch, so they decode with everyone else from the next step.

Forced tokens (budget forcing's `</think>` and "Wait") are part of the completion with mask 0 and
log-prob 0, so RL losses can skip them. Log-probs of sampled tokens are under the distribution
actually sampled from (after temperature, top-k, top-p); greedy rows report the raw log-softmax.

Modules:
    params    `SamplingParams`, `Completion`, `StreamDelta`: what a call asks for and gets back.
    sequence  `SequenceState`: one sequence on the host (incremental detokenizer, stop strings).
    budget    `BudgetForcing`: thinking caps and "Wait" insertion on the device (s1, arXiv 2501.19393).
    batch     `DecodeBatch`: prefill, fan-out, the decode step (plain and MTP speculative),
              `select` (drop finished rows) and `merge` (admit a prefilled batch).
    decode    `DecodeStep`: the one-token decode step (eager or torch.compile), fused decode weights.
    session   `EngineSession`: continuous batching over one running `DecodeBatch`.
    engine    `Engine` (generate, stream, session) and `GenerationStream`, the loop of one call.
Per-row sampling and the counter-based RNG live in `r1kit.sampling`.
"""

from r1kit.engine.engine import Engine, GenerationStream
from r1kit.engine.params import Completion, SamplingParams, StreamDelta
from r1kit.engine.session import EngineSession

__all__ = ["Completion", "Engine", "EngineSession", "GenerationStream", "SamplingParams", "StreamDelta"]
