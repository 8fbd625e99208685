"""Faults and correctness guards: an unwritable output folder, packing isolation."""

from __future__ import annotations

import torch
from datasets import Dataset

from conftest import run_cli
from recipe_runner.data.batches import Collator, Rows
from recipe_runner.train.module import next_token_hidden, supervised_loss


def test_an_unwritable_output_folder_is_refused_before_anything_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = run_cli("stage=prepare", f"paths.output_dir={blocker / 'runs'}")
    assert res.returncode == 2 and res.stderr.startswith(f"error: paths.output_dir={blocker / 'runs'}: cannot write "
                                                         f"there (Not a directory)"), res.stderr
    assert "Traceback" not in res.stderr


def test_a_packed_row_has_the_loss_of_its_examples_apart(tiny_model):
    """Packing holds only if the forward builds a block-diagonal mask from the restarting
    position_ids (it does with use_cache=False; with the default cache it does not and the second
    example attends to the first). Checked on the forward training uses (module.next_token_hidden,
    module.supervised_loss)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 1000, (n,), generator=g).tolist() for n in (23, 31)]
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids})
    packed_rows, apart_rows = Rows(ds, 64, packing=True, seed=0), Rows(ds, 64, packing=False, seed=0)
    assert len(packed_rows) == 1 and len(apart_rows) == 2
    first = len(packed_rows.ids[packed_rows.rows[0][0]])  # where the second packed example starts
    packed_batch = Collator(0, packing=True)([packed_rows[0]])
    leaky = {**packed_batch, "position_ids": torch.arange(packed_batch["input_ids"].shape[1])[None]}  # plain causal
    with torch.no_grad():
        packed, n_packed = supervised_loss(model, packed_batch)
        apart = [supervised_loss(model, Collator(0, packing=False)([apart_rows[i]])) for i in range(2)]
        second_alone = next_token_hidden(model, Collator(0, packing=False)([apart_rows[packed_rows.rows[0][1]]]))[0][0]
        second_packed = next_token_hidden(model, packed_batch)[0][0, first:]
        second_leaky = next_token_hidden(model, leaky)[0][0, first:]
    assert n_packed == sum(n for _, n in apart) == 23 + 31 - 2
    assert torch.allclose(packed, sum(loss for loss, _ in apart), rtol=1e-5)
    scale = second_alone.abs().max()
    assert (second_packed - second_alone).abs().max() < 1e-4 * scale
    assert (second_leaky - second_alone).abs().max() > 1e-2 * scale  # the check can fail: a leak shows
