"""Reinforcement learning with verifiable rewards: the losses (`losses.py`) and the GRPO stage.

Only the pure loss functions are re-exported here, so importing `r1kit.rl` stays cheap and never
pulls in the training stage.
"""

from r1kit.rl.losses import (
    ADVANTAGE_SCALES,
    LOSS_TYPES,
    entropy_from_logits,
    group_advantages,
    k3_kl,
    policy_loss,
    token_logprobs,
)

__all__ = [
    "ADVANTAGE_SCALES",
    "LOSS_TYPES",
    "entropy_from_logits",
    "group_advantages",
    "k3_kl",
    "policy_loss",
    "token_logprobs",
]
