"""The fused, chunked head (`head_logprobs`, `head_cross_entropy`): same numbers as the plain head.

Log-probs, entropies and the gradients w.r.t. every model parameter match the unchunked
computation (full logits, log_softmax) to 1e-5 in fp32 on a small model, for chunk sizes that do
and do not divide the number of positions.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from r1kit.model import Transformer
from r1kit.model.config import ModelConfig
from r1kit.rl.losses import head_cross_entropy, head_logprobs, token_logprobs
from r1kit.rl.rollout import Batch, completion_logprobs


def _model(tie: bool = True) -> Transformer:
    cfg = ModelConfig.preset(
        "tiny-llama",
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        tie_word_embeddings=tie,
        vocab_size=97,
    )
    return Transformer(cfg).train()


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 7, 23, 64, 1000])
@pytest.mark.parametrize("tie", [True, False])
def test_head_logprobs_and_entropy_match_full_logits(chunk, tie):
    model = _model(tie)
    ids = torch.randint(0, 97, (3, 23))
    targets = torch.randint(0, 97, (3, 23))
    wt = torch.rand(3, 23)  # arbitrary weights on both outputs, so both backward paths are exercised
    temp = 0.7

    logits = model(ids) / temp
    ref = token_logprobs(logits, targets)
    logq = torch.log_softmax(logits, -1)
    ref_ent = -(logq.exp() * logq).sum(-1)
    ((ref * wt).sum() + (ref_ent * wt.flip(0)).sum()).backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    hidden = model.hidden_states(ids)
    logp, ent = head_logprobs(
        hidden, model.lm_head.weight, targets, temperature=temp, entropy=True, chunk_size=chunk
    )
    ((logp * wt).sum() + (ent * wt.flip(0)).sum()).backward()
    got = _grads(model)
    assert logp.dtype == torch.float32 and logp.shape == (3, 23)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)


def test_head_logprobs_float64_hand_case():
    # one position, V = 3, logits [0, ln 2, 0] -> p = [1/4, 1/2, 1/4]
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0], [0.0, 0.0]], dtype=torch.float64)
    logp, ent = head_logprobs(h, w, torch.tensor([1]), entropy=True, chunk_size=1)
    assert logp.dtype == torch.float64
    assert logp.item() == pytest.approx(math.log(0.5), abs=1e-12)
    assert ent.item() == pytest.approx(1.5 * math.log(2.0), abs=1e-12)
    logp.sum().backward()
    # d logp / dz = onehot - p = [-1/4, 1/2, -1/4]; dz/dh_0 = w[:, 0]
    assert h.grad[0, 0].item() == pytest.approx(0.5 * math.log(2.0), abs=1e-12)


def test_frozen_head_gets_no_gradient_and_no_grad_runs():
    model = _model().requires_grad_(False)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        logp = head_logprobs(model.hidden_states(ids), model.lm_head.weight, ids, chunk_size=4)
    torch.testing.assert_close(logp, token_logprobs(model(ids), ids), rtol=0, atol=1e-5)
    assert not logp.requires_grad


@pytest.mark.parametrize("chunk", [3, 5, 512])
def test_head_cross_entropy_matches_f_cross_entropy(chunk):
    model = _model()
    ids = torch.randint(0, 97, (2, 11))
    targets = torch.randint(0, 97, (2, 11))
    targets[0, :4] = -100
    targets[1, 7:] = -100
    ref = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    ref.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    got_loss = head_cross_entropy(model.hidden_states(ids), model.lm_head.weight, targets, chunk_size=chunk)
    got_loss.backward()
    torch.testing.assert_close(got_loss, ref, rtol=1e-6, atol=1e-5)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, want[name], rtol=1e-5, atol=1e-5, msg=name)
    # nothing labelled: an exact zero that still backpropagates
    none = head_cross_entropy(model.hidden_states(ids), model.lm_head.weight, torch.full_like(targets, -100))
    assert none.item() == 0.0 and none.requires_grad


def test_completion_logprobs_runs_the_head_on_counted_tokens_only(monkeypatch):
    model = _model()
    B, L = 2, 10
    ids = torch.randint(1, 97, (B, L))
    index = torch.tensor([[5, 6, 7, 8], [3, 4, 5, 6]])
    targets = ids.gather(1, index + 1)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    batch = Batch(ids, index, targets, mask, torch.zeros(B))
    seen = []
    real = head_logprobs

    def spy(hidden, *a, **kw):
        seen.append(hidden.shape[0])
        return real(hidden, *a, **kw)

    monkeypatch.setattr("r1kit.rl.rollout.head_logprobs", spy)
    logp, _ = completion_logprobs(model, batch, temperature=1.0, chunk_size=2)
    assert seen == [int(mask.sum())]
    full = token_logprobs(model(ids), torch.roll(ids, -1, 1)).gather(1, index)
    torch.testing.assert_close(logp[mask == 1], full[mask == 1], rtol=0, atol=1e-5)
    assert (logp[mask == 0] == 0).all()


def test_head_logprobs_rejects_bad_arguments():
    h, w = torch.zeros(2, 4), torch.zeros(5, 4)
    with pytest.raises(ValueError, match="disagree"):
        head_logprobs(h, w, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        head_logprobs(h, w, torch.zeros(2, dtype=torch.long), chunk_size=0)
