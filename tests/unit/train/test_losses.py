"""Loss options: EAFT weights (formula, top-k, no gradient), KL to the base model, the general-token
mask in batches. The CLI run with train.loss=eaft and train.kl_to_base on is in test_resume.py
(the killed sweep trains with both)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recipe_runner.train.losses import eaft_weights, kl_to_base, token_ce


def np_eaft(logits: np.ndarray, k: int) -> np.ndarray:
    """The formula written out: softmax over V, keep the top k, renormalise, entropy / log k."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = -np.sort(-p, axis=-1)[:, :k]
    q = top / top.sum(-1, keepdims=True)
    return -(q * np.log(q)).sum(-1) / np.log(k)


# ---------------------------------------------------------------- EAFT weights


def test_uniform_over_k_tokens_weighs_one():
    assert torch.allclose(eaft_weights(torch.zeros(3, 5), 5), torch.ones(3), atol=1e-6)
    # flat over its top k, the rest of a larger vocabulary far below: still 1
    logits = torch.full((1, 100), -50.0)
    logits[0, :4] = 2.0
    assert eaft_weights(logits, 4).item() == pytest.approx(1.0, abs=1e-6)


def test_one_hot_prediction_weighs_about_zero():
    logits = torch.zeros(2, 50)
    logits[:, 7] = 40.0
    w = eaft_weights(logits, 20)
    assert (w >= 0).all() and (w < 1e-12).all()


def test_three_token_example_by_hand():
    p = np.array([0.5, 0.3, 0.2])
    expected = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(3)
    assert expected == pytest.approx(0.937231, abs=1e-6)  # H = 1.029653 nats, log 3 = 1.098612
    logits = torch.tensor(np.log(p), dtype=torch.float32)[None] + 3.0  # a shift changes nothing
    assert eaft_weights(logits, 3).item() == pytest.approx(expected, abs=1e-6)
    assert eaft_weights(logits, 20).item() == pytest.approx(expected, abs=1e-6)  # k capped at V


def test_matches_the_numpy_formula_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 64, generator=g) * 3
    for k in (2, 5, 20, 64):
        np.testing.assert_allclose(eaft_weights(logits, k).numpy(), np_eaft(logits.double().numpy(), k), atol=1e-5)


def test_top_k_two_counts_only_the_two_largest():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = np.array([0.4, 0.3]) / 0.7
    expected = -(q * np.log(q)).sum() / math.log(2)
    logits = torch.tensor(np.log(p), dtype=torch.float32)[None]
    assert eaft_weights(logits, 2).item() == pytest.approx(expected, abs=1e-6)
    # moving mass among the tokens outside the top 2 does not change the weight
    other = torch.tensor(np.log([0.4, 0.3, 0.29, 0.01]), dtype=torch.float32)[None]
    assert eaft_weights(other, 2).item() == pytest.approx(expected, abs=1e-6)
    # but with k = 4 it does
    assert eaft_weights(logits, 4).item() != pytest.approx(eaft_weights(other, 4).item(), abs=1e-3)


def test_k_below_two_is_refused():
    with pytest.raises(ValueError, match="top-k"):
        eaft_weights(torch.zeros(1, 5), 1)


def test_no_gradient_flows_through_the_weight():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 30, generator=g)
    targets = torch.randint(0, 30, (6,), generator=g)
    logits = base.clone().requires_grad_(True)
    w = eaft_weights(logits, 10)
    assert not w.requires_grad and w.grad_fn is None
    (w * token_ce(logits, targets)).sum().backward()
    # the gradient equals that of the same sum with w a plain constant: d(w)/d(logits) does not enter
    const = base.clone().requires_grad_(True)
    (w.clone() * F.cross_entropy(const, targets, reduction="none")).sum().backward()
    assert torch.allclose(logits.grad, const.grad)


def test_token_ce_is_per_token_cross_entropy():
    logits, targets = torch.randn(5, 11), torch.randint(0, 11, (5,))
    ce = token_ce(logits.half(), targets)
    assert ce.dtype == torch.float32 and ce.shape == (5,)
    assert torch.allclose(ce, F.cross_entropy(logits.half().float(), targets, reduction="none"))


def test_kl_function_is_zero_on_equal_and_positive_on_different_logits():
    a = torch.randn(4, 9)
    assert torch.equal(kl_to_base(a, a.clone()), torch.zeros(4))
    b = a + torch.randn(4, 9)
    p, q = F.softmax(a, -1), F.softmax(b, -1)
    expected = (p * (p.log() - q.log())).sum(-1)  # KL(p_tuned || p_base)
    assert torch.allclose(kl_to_base(a, b), expected, atol=1e-6) and (expected > 0).all()


# ---------------------------------------------------------------- general-token mask in batches


def test_rows_mark_the_tokens_of_general_sources():
    from datasets import Dataset

    from recipe_runner.data.batches import Collator, Rows

    ds = Dataset.from_dict({
        "source": ["alex", "general", "alex", "wiki"],
        "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]],
        "labels": [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]],
    })
    rows = Rows(ds, max_length=8, packing=True, seed=0, general_sources={"general", "wiki"})
    general_of = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 0, 7: 0, 8: 0, 9: 0, 10: 1}
    items = [rows[r] for r in range(len(rows))]
    for item in items:
        assert item["general"] == [general_of[t] for t in item["input_ids"]]
    batch = Collator(pad_id=0, packing=True)(items)
    assert batch["general"].dtype == torch.bool and batch["general"].shape == batch["input_ids"].shape
    assert int(batch["general"].sum()) == 3  # padding is never general
    assert "general" not in Rows(ds, 8, True, 0)[0]  # off unless asked for


# ---------------------------------------------------------------- KL to the base (peft adapter disabled)


@pytest.fixture
def lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    base = LlamaForCausalLM(cfg)
    for p in base.parameters():
        p.requires_grad_(False)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    return model.train()


def packed_batch(general_first: bool = True) -> dict:
    """One packed row: a general example (6 tokens) then a niche one (5); labels on all but each first."""
    ids = torch.tensor([[3, 8, 12, 5, 9, 2, 7, 1, 30, 22, 4]])
    labels = ids.clone()
    labels[0, 0] = labels[0, 6] = -100
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]])
    general = torch.zeros_like(ids, dtype=torch.bool)
    general[0, :6] = general_first
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "general": general, "n_real": 11}


def perturb_lora_b(model, scale: float = 0.5):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * scale)


def test_kl_term_is_exactly_zero_with_fresh_adapter_and_positive_after_it_changes(lora_model):
    from recipe_runner.train.module import supervised_loss, training_objective

    batch = packed_batch()
    fresh = training_objective(lora_model, batch, "ce", kl_weight=0.1)
    assert fresh["n_general"] == 5 and fresh["n"] == 9  # 5 general targets (positions 1-5), 4 niche
    assert fresh["kl"].item() == 0.0  # lora_B starts at zero: tuned == base bit for bit
    plain, n = supervised_loss(lora_model, batch)
    assert fresh["loss"].item() == pytest.approx(plain.item() / n, rel=1e-6)

    perturb_lora_b(lora_model)
    lora_model.eval()  # no LoRA dropout from here: separate forwards agree
    moved = training_objective(lora_model, batch, "ce", kl_weight=0.1)
    assert moved["kl"].item() > 1e-4
    plain, n = supervised_loss(lora_model, batch)
    assert moved["loss"].item() == pytest.approx(plain.item() / n + 0.1 * moved["kl"].item(), rel=1e-5)
    # the base side is the adapter-disabled model: its logits match a full forward under disable_adapter
    with torch.no_grad():
        with lora_model.disable_adapter():
            base_logits = lora_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        tuned_logits = lora_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    expected = kl_to_base(tuned_logits[0, :5], base_logits[0, :5]).mean()
    evaluated = training_objective(lora_model, batch, "ce", kl_weight=0.1)["kl"]
    assert evaluated.item() == pytest.approx(expected.item(), rel=1e-4)


def test_kl_on_a_row_subset(lora_model):
    """Three rows, only the middle one with general tokens: the base forward runs on that row alone."""
    from recipe_runner.train.module import training_objective

    a, b = packed_batch(), packed_batch(general_first=False)
    batch = {k: torch.cat([b[k], a[k], b[k]]) for k in ("input_ids", "labels", "position_ids", "general")}
    batch["input_ids"][2, 3] = 17  # rows differ
    fresh = training_objective(lora_model, batch, "eaft", eaft_top_k=20, kl_weight=0.1)
    assert fresh["n_general"] == 5 and fresh["n"] == 27 and fresh["kl"].item() == 0.0

    perturb_lora_b(lora_model)
    lora_model.eval()
    moved = training_objective(lora_model, batch, "ce", kl_weight=0.1)
    with torch.no_grad():
        with lora_model.disable_adapter():
            base_logits = lora_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        tuned_logits = lora_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    expected = kl_to_base(tuned_logits[1, :5], base_logits[1, :5]).mean()
    assert moved["kl"].item() == pytest.approx(expected.item(), rel=1e-4) and expected.item() > 1e-4


def test_kl_gradient_reaches_the_adapter_only(lora_model):
    from recipe_runner.train.module import training_objective

    perturb_lora_b(lora_model)
    batch = packed_batch()
    batch["labels"][0, 6:] = -100  # only the general example is supervised: the loss is CE + KL there
    out = training_objective(lora_model, batch, "ce", kl_weight=1.0)
    out["kl"].backward()
    grads = [p.grad for n, p in lora_model.named_parameters() if "lora_" in n]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in lora_model.named_parameters() if "lora_" not in n)


def test_no_base_forward_without_general_tokens(lora_model, monkeypatch):
    from recipe_runner.train.module import training_objective

    def boom():
        raise AssertionError("base forward ran on a batch without general tokens")

    monkeypatch.setattr(lora_model, "disable_adapter", boom)
    out = training_objective(lora_model, packed_batch(general_first=False), "ce", kl_weight=0.1)
    assert "kl" not in out and out["n_general"] == 0
    assert "kl" not in training_objective(lora_model, packed_batch(), "ce", kl_weight=0.0)


def test_eaft_objective_is_weighted_sum_over_supervised_count(lora_model):
    from recipe_runner.train.module import next_token_hidden, training_objective

    perturb_lora_b(lora_model)
    lora_model.eval()  # no dropout: two forwards agree
    batch = packed_batch()
    out = training_objective(lora_model, batch, "eaft", eaft_top_k=5)
    with torch.no_grad():
        hidden, targets = next_token_hidden(lora_model, batch)
        keep = targets != -100
        logits = lora_model.get_base_model().lm_head(hidden[keep])
        w = torch.tensor(np_eaft(logits.double().numpy(), 5), dtype=torch.float32)
        expected = (w * F.cross_entropy(logits, targets[keep], reduction="none")).sum() / int(keep.sum())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["eaft_weight_mean"].item() == pytest.approx(w.mean().item(), rel=1e-5)
    assert out["loss"].item() < out["ce"].item()  # every weight is <= 1


def test_module_refuses_bad_settings(lora_model):
    from recipe_runner.errors import RecipeError
    from recipe_runner.train.module import PersonaModule

    args = (1e-4, 0.0, 0.0, ["alex"], {"alex": "niche"})
    with pytest.raises(RecipeError, match="eaft_top_k"):
        PersonaModule(lora_model, *args, loss="eaft", eaft_top_k=1)
    with pytest.raises(RecipeError, match="kl_to_base"):
        PersonaModule(lora_model, *args, kl_to_base=-1.0)
    with pytest.raises(RecipeError, match="full_finetune"):
        PersonaModule(lora_model.get_base_model(), *args, kl_to_base=0.1)
