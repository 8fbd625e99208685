"""End to end on the embedded SmolLM2-135M-Instruct: the default recipe, cut to a few steps."""

import json

from conftest import only_run_dir, run_cli


def test_default_recipe_runs_on_embedded_smollm2(tmp_path):
    # every check runs, on a smaller budget: on a float32-only CPU the recipe's own budget made
    # evaluation 346 of this test's 407 s
    res = run_cli("train.max_steps=3", "train.batch_size=2", "train.grad_accum=1",
                  "data.sources.alex.max_examples=10", "data.max_val_examples=4",
                  "eval.max_prompts=4", "eval.max_new_tokens=8", f"paths.output_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["recipe"] == "alex_persona_cpu" and summary["global_step"] == 3
    assert 1.8 < summary["general_to_niche_ratio"] < 2.2  # the CPU cut: 1:2 in tokens
    for key in ("val/loss", "val/loss_niche", "val/loss_general", "val/loss_alex"):
        assert 0 < summary["val_loss"][key] < 20
    assert (run_dir / "adapters" / "last" / "adapter_model.safetensors").exists()
    cfg = json.loads((run_dir / "adapters" / "last" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["peft_type"] == "LORA"
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert {"persona/adherence", "forget/ordinary_nll", "parrot/rate"} <= set(summary["checks_last"])
