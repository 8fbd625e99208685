"""stage=export: a merged transformers folder and GGUF files that reproduce base + adapter.

All four CLI runs (merged, gguf, two bad inputs) start together in one module fixture: each pays
~10 s of imports before it does anything, and they overlap. Reading a GGUF back with transformers
is slow (gguf-py parses the 49k tokens and merges one value at a time: ~10 s per metadata pass), so
the f16 file is read once in full (config, weights, tokenizer) and the q8_0 file with that config.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import run_cli

PROMPTS = ["yo, what is kubernetes?", "How do I center a div?", "Tell me about DNS.", "What is 2 plus 9?"]


@pytest.fixture(scope="module")
def exports(tiny_runs, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    run = tiny_runs["alex"]
    not_adapter = d / "not-an-adapter"
    not_adapter.mkdir()
    (not_adapter / "notes.txt").write_text("just a folder")
    full = d / "full"
    full.mkdir()
    (full / "keep.txt").write_text("someone's file")
    common = ("stage=export", "logger.wandb.enabled=false", f"paths.output_dir={d / 'outputs'}")
    jobs = {
        "merged": (f"adapter={run}", "export.format=merged", f"export.out={d / 'merged'}"),
        "gguf": (f"adapter={run}", "export.format=gguf", "export.gguf_types=[f16,q8_0]", f"export.out={d / 'gguf'}"),
        "not_adapter": (f"adapter={not_adapter}", "export.format=merged", f"export.out={d / 'never'}"),
        "not_empty": (f"adapter={run}", "export.format=merged", f"export.out={full}"),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(run_cli, *common, *args) for k, args in jobs.items()}
    return {"dir": d, "run": run, "folders": {"not_adapter": not_adapter, "not_empty": full},
            **{k: f.result() for k, f in futures.items()}}


def card_of(run):
    return json.loads((run / "adapters" / "best" / "persona.json").read_text())


def encode(tokenizer, system: str, prompt: str) -> torch.Tensor:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def greedy(model, ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             eos_token_id=2, pad_token_id=2)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def merged(exports):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = exports["merged"]
    assert res.returncode == 0, res.stderr[-3000:]
    out = exports["dir"] / "merged"
    return (AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(out))


def test_merged_matches_base_plus_adapter_and_needs_no_peft(exports, merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, card = exports["dir"] / "merged", card_of(exports["run"])
    model, tokenizer = merged
    assert "merging the adapter" in exports["merged"].stdout and "model.safetensors" in exports["merged"].stdout
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert tokenizer.chat_template == card["chat_template"]
    saved = json.loads((out / "persona.json").read_text())
    assert saved["system_prompt"] == card["system_prompt"] and saved["export"]["format"] == "merged"
    assert saved["export"]["quant_note"] is None  # the tiny runs train on a float32 base

    base = AutoModelForCausalLM.from_pretrained(card["base"]["name_or_path"], dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, exports["run"] / "adapters" / "best").eval()
    for prompt in PROMPTS[:3]:
        ids = encode(tokenizer, card["system_prompt"], prompt)
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-4)

    probe = ("import sys; sys.modules['peft'] = None\n"  # `import peft` now raises ImportError
             "import torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
             f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
             f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
             "ids = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True,"
             " return_tensors='pt', return_dict=True)['input_ids']\n"
             "print('ok', tuple(m(ids).logits.shape))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


def test_gguf_round_trip_and_modelfile(exports, merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = exports["gguf"]
    assert res.returncode == 0, res.stderr[-3000:]
    out, card = exports["dir"] / "gguf", card_of(exports["run"])
    assert {p.name for p in out.iterdir()} == {"alex-f16.gguf", "alex-q8_0.gguf", "Modelfile", "persona.json"}
    assert "wrote alex-q8_0.gguf" in res.stdout

    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./alex-q8_0.gguf\n" in modelfile
    assert f'SYSTEM """{card["system_prompt"]}"""\n' in modelfile  # Ollama's parser: no escapes inside """
    assert 'PARAMETER stop "<|im_end|>"\n' in modelfile
    # The Go template renders what the HF template renders (this stands in for Ollama's text/template)
    template = re.search(r'TEMPLATE """(.*?)"""\n', modelfile, re.S).group(1)
    head, body, tail = re.fullmatch(r"(.*)\{\{- range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template, re.S).groups()
    messages = [{"role": "system", "content": card["system_prompt"]}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"}, {"role": "user", "content": "DNS?"}]
    rendered = head + "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
                              for m in messages) + tail
    model, tokenizer = merged
    assert rendered == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    f16 = AutoModelForCausalLM.from_pretrained(out, gguf_file="alex-f16.gguf", dtype=torch.float32).eval()
    f16_tok = AutoTokenizer.from_pretrained(out, gguf_file="alex-f16.gguf")
    assert f16_tok.chat_template == card["chat_template"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(f16.config, key) == getattr(model.config, key), key
    # Exact layout: every weight is the merged weight rounded to f16 (q_proj/k_proj permuted and back)
    reference = model.state_dict()
    for name, w in f16.state_dict().items():
        ref = reference[name].half().float() if reference[name].ndim == 2 else reference[name]
        assert torch.equal(w, ref), name
    config = copy.deepcopy(f16.config)  # the same metadata; skips a ~10 s pass over the tokens
    del config.quantization_config  # the GGUF marker of the f16 load
    q8 = AutoModelForCausalLM.from_pretrained(out, gguf_file="alex-q8_0.gguf", config=config,
                                              dtype=torch.float32).eval()
    worst, scale = 0.0, 0.0
    for prompt in PROMPTS:
        ids = encode(tokenizer, card["system_prompt"], prompt)
        assert torch.equal(encode(f16_tok, card["system_prompt"], prompt), ids)
        assert greedy(f16, ids) == greedy(model, ids), prompt
        with torch.no_grad():
            logits = model(ids).logits
            # f16 weights move the logits by a fraction of their size: seen 2.2e-4 (float32-trained adapter) and
            # 2.5e-3 on |logits| <= 1.04 (0.24 %, an adapter trained bf16-mixed on an AVX512-BF16 machine)
            assert (f16(ids).logits - logits).abs().max() <= 0.01 * logits.abs().max()
            worst = max(worst, (q8(ids).logits - logits).abs().max().item())
            scale = max(scale, logits.abs().max().item())
    # q8_0 stores each weight to half a step of its 32-block's scale (d = max|w|/127, itself an f16, so
    # up to 127 x 2^-11 x d more): checked weight by weight, the same on every machine.
    for name, w in q8.state_dict().items():
        if reference[name].ndim == 2:
            ref = reference[name].reshape(-1, 32)
            step = ref.abs().max(dim=1, keepdim=True).values / 127
            assert ((w.reshape(-1, 32) - ref).abs() <= 0.57 * step + 1e-8).all(), name
    # The logits move by a fraction of their size. Seen: tiny model 0.0046 on |logits| <= 0.78 (0.6 %), and
    # 0.051 on 1.04 (4.9 %) with an adapter trained bf16-mixed (AVX512-BF16); the real SmolLM2-135M with a
    # random LoRA merged 0.91 on |logits| <= 40.6 (2.2 %), greedy 8 tokens equal on 7 of 8 prompts (f16: 0.035,
    # 8 of 8). 10 % of the largest logit is a sanity bound; the weights above are the exact check.
    assert worst < 0.1 * scale, (worst, scale)


def test_gguf_refuses_what_it_cannot_describe(tmp_path, merged):
    from transformers import GPT2Config

    from recipe_runner.errors import RecipeError
    from recipe_runner.use.gguf_export import check_gguf_base, pre_tokenizer

    assert pre_tokenizer(merged[1]) == "smollm"  # what llama.cpp's own converter writes for SmolLM2
    GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(RecipeError, match=r"is a gpt2 model \(GPT2LMHeadModel\); only llama-architecture"):
        check_gguf_base(str(tmp_path))


def test_bad_input_is_one_error_line(exports):
    for key, named in exports["folders"].items():
        res = exports[key]
        assert res.returncode == 2, (key, res.stderr[-3000:])
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(named) in errors[0], (key, res.stderr[-3000:])
        assert "Traceback" not in res.stderr + res.stdout, key
    assert (exports["folders"]["not_empty"] / "keep.txt").read_text() == "someone's file"
    assert not (exports["dir"] / "never").exists()


def test_adapter_for_another_base_is_refused(exports):
    from recipe_runner.errors import RecipeError
    from recipe_runner.train.adapter_card import check_base

    folder = exports["run"] / "adapters" / "best"
    card = card_of(exports["run"])
    card["base"]["weights_sha256"] = "0" * 64
    with pytest.raises(RecipeError, match=r"trained on .* 0000000000000000\.\.\..* has weights sha256"):
        check_base(folder, card, card["base"]["name_or_path"])


def test_default_out_folder(tmp_path):
    from recipe_runner.config.schema import ExportFormat
    from recipe_runner.errors import RecipeError
    from recipe_runner.use.export import out_folder

    run = tmp_path / "run"
    assert out_folder(None, run / "adapters" / "best", ExportFormat.gguf) == run.resolve() / "export" / "gguf"
    assert out_folder(None, run / "adapters" / "epoch_02", ExportFormat.merged) == \
        run.resolve() / "export" / "merged-epoch_02"
    mine = tmp_path / "mine"
    assert out_folder(None, mine, ExportFormat.merged) == mine.resolve() / "export" / "merged"
    (run / "export" / "gguf").mkdir(parents=True)
    assert out_folder(None, run / "adapters" / "best", ExportFormat.gguf).is_dir()  # empty: used
    (run / "export" / "gguf" / "alex-f16.gguf").write_text("earlier export")
    with pytest.raises(RecipeError, match=r"export/gguf exists and is not empty"):
        out_folder(None, run / "adapters" / "best", ExportFormat.gguf)
