"""Loss math as pure functions on tensors: per-token cross-entropy, EAFT weights, KL to the base.

Every function takes logits of shape (N, V): one row per supervised position (the module runs
the vocabulary projection only where a label exists), V the vocabulary. They return one value
per row so the caller chooses the reduction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy -log softmax(logits)[target], shape (N,), in float32.

    logits: (N, V) scores; targets: (N,) token ids (no IGNORE entries: select labelled rows first).
    """
    return F.cross_entropy(logits.float(), targets, reduction="none")


def eaft_weights(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy-Adaptive Fine-Tuning weights (arXiv 2601.02151), shape (N,), in [0, 1], detached.

    For each row: the softmax over the vocabulary, its k largest probabilities renormalised to
    sum 1 (q), the entropy H = -sum q log q, and w = H / log(k). A confident prediction (one
    dominant token) gives w ~ 0, a flat one over its top k gives w = 1, so tokens where the model
    already commits to an answer (whether or not it is the target) weigh less in the loss.

    Renormalising the top-k softmax probabilities equals a softmax over the top-k logits
    (p_i / sum_topk p_j = exp(l_i) / sum_topk exp(l_j)), which is what is computed: no full-vocab
    softmax. k is capped at V. The weight carries no gradient: it scales the cross-entropy, it is
    not itself optimised (otherwise the model could lower the loss by becoming more confident).
    """
    if k < 2:
        raise ValueError(f"eaft top-k must be >= 2 (the entropy of 1 token is always 0), got {k}")
    k = min(k, logits.shape[-1])
    with torch.no_grad():
        top = logits.detach().float().topk(k, dim=-1).values
        logq = torch.log_softmax(top, dim=-1)
        entropy = -(logq.exp() * logq).sum(-1)  # exp(-inf) * -inf cannot occur: top-k logits are finite
        w = entropy / math.log(k) if k > 1 else torch.zeros_like(entropy)
    return w.clamp_(0.0, 1.0)


def kl_to_base(logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p_tuned || p_base) = sum_v p_t (log p_t - log p_b), shape (N,), float32, >= 0.

    logits: the tuned model's (N, V), with gradient; base_logits: the same positions under the
    base model (adapter disabled), treated as a constant target.
    """
    log_t = torch.log_softmax(logits.float(), dim=-1)
    log_b = torch.log_softmax(base_logits.detach().float(), dim=-1)
    # F.kl_div(input, target) = target * (log target - input): input = base, target = tuned
    return F.kl_div(log_b, log_t, reduction="none", log_target=True).sum(-1)
