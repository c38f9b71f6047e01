"""The model is exactly SmolLM2-135M: parameter count, names and shapes of the published checkpoint."""

import copy

from recipe.config import load_config
from recipe.model import CAUSAL_SDPA, build_llama_config, build_model, choose_attn_implementation, parameter_breakdown

import torch
from conftest import ROOT
from conftest import TINY_MODEL as TINY
from transformers import AutoModelForCausalLM


def build_on_meta(cfg):
    config = build_llama_config(cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_default_config_has_134_515_008_parameters():
    model = build_on_meta(load_config())
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_smollm2_360m_is_one_small_yaml_with_361_821_120_parameters():
    cfg = load_config(ROOT / "config_smollm2_360M.yaml")
    assert cfg.name == "SmolLM2-360M" and cfg.training["output_dir"] == "runs/smollm2-360M"
    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.parameters()) == 361_821_120
    assert "32 blocks" in parameter_breakdown(model) and model.config.num_key_value_heads == 5
    assert cfg.training["learning_rate"] == load_config().training["learning_rate"]  # the rest is the 135M recipe


def test_parameter_breakdown_adds_up():
    text = parameter_breakdown(build_on_meta(load_config()))
    assert "134,515,008 parameters" in text
    assert "embedding         28,311,552  (49,152 x 576)" in text
    assert "30 blocks        106,202,880  (3,540,096 each: attention 884,736, MLP 2,654,208, norms 1,152)" in text
    assert "final norm               576" in text
    assert "tied to the embedding" in text


def test_state_dict_names_and_shapes_match_the_published_model():
    state = build_on_meta(load_config()).state_dict()
    expected = {"model.embed_tokens.weight": (49152, 576), "model.norm.weight": (576,)}
    for i in range(30):
        p = f"model.layers.{i}."
        expected.update(
            {
                p + "self_attn.q_proj.weight": (576, 576),
                p + "self_attn.k_proj.weight": (192, 576),
                p + "self_attn.v_proj.weight": (192, 576),
                p + "self_attn.o_proj.weight": (576, 576),
                p + "mlp.gate_proj.weight": (1536, 576),
                p + "mlp.up_proj.weight": (1536, 576),
                p + "mlp.down_proj.weight": (576, 1536),
                p + "input_layernorm.weight": (576,),
                p + "post_attention_layernorm.weight": (576,),
            }
        )
    shapes = {name: tuple(t.shape) for name, t in state.items() if name != "lm_head.weight"}
    assert shapes == expected


def test_head_is_tied_and_config_matches_smollm2():
    config = build_llama_config(load_config())
    assert config.tie_word_embeddings and config.rms_norm_eps == 1e-5
    assert config.rope_parameters["rope_theta"] == 100000.0
    assert config.head_dim == 64 and config.hidden_act == "silu"
    assert config.bos_token_id == 0 and config.eos_token_id == 0
    assert not config.attention_bias and not config.mlp_bias
    model = build_on_meta(load_config())
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_attention_says_what_it_loads_and_falls_back_to_sdpa_in_one_line(capsys, monkeypatch):
    from recipe import model as modeling

    def said():
        return capsys.readouterr().out.strip().splitlines()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for requested in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2"):
        assert choose_attn_implementation(requested) == CAUSAL_SDPA
        assert said() == [f"attention: sdpa_causal (the recipe's causal SDPA; {requested} needs a CUDA GPU)"]
    assert choose_attn_implementation("flash_attention_2", document_aware=True) == "sdpa"
    assert said()[0].startswith("attention: sdpa (transformers' sdpa, its masks keep the packed documents apart")
    assert choose_attn_implementation("eager") == "eager" and said() == ["attention: eager"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU without flash-attn
    monkeypatch.setitem(modeling.FLASH_ATTENTION, "flash_attention_2", lambda: False)
    monkeypatch.setattr(modeling, "is_kernels_available", lambda: False)
    assert choose_attn_implementation("flash_attention_2") == CAUSAL_SDPA
    assert "pip install kernels loads flash_attention_2 from the Hub instead" in said()[0]
    assert choose_attn_implementation("kernels-community/flash-attn2") == CAUSAL_SDPA
    assert "needs the kernels package: pip install kernels" in said()[0]
    monkeypatch.setattr(modeling, "is_kernels_available", lambda: True)  # transformers' kernels fallback
    assert choose_attn_implementation("flash_attention_2") == "flash_attention_2"
    assert said() == [
        "attention: flash_attention_2 from the Hub kernel kernels-community/flash-attn2 (flash-attn is "
        "not installed; the kernels package loads it)"
    ]


def test_a_kernel_that_cannot_load_falls_back_to_sdpa_in_one_line(capsys, monkeypatch):
    from recipe import model as modeling

    real = modeling.AutoModelForCausalLM.from_config

    def offline_kernels(config, attn_implementation=None, **kwargs):
        if "/" in (attn_implementation or ""):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nmore")
        return real(config, attn_implementation=attn_implementation, **kwargs)

    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_config", offline_kernels)
    cfg = load_config(None, TINY)
    model = build_model(cfg, build_llama_config(cfg), "kernels-community/flash-attn2")
    assert model.config._attn_implementation == CAUSAL_SDPA
    assert capsys.readouterr().out.strip().splitlines() == [
        "attention: sdpa_causal (the recipe's causal SDPA; kernels-community/flash-attn2 could not load: We couldn't "
        "connect to 'https://huggingface.co' to load the files)"
    ]


def sdpa_calls_when_compiled(model, **inputs) -> list[dict]:
    """The arguments of every SDPA call in the graph torch.compile captures (a backend that only looks)."""
    calls = []

    def inspect(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target):
                calls.append(dict(node.kwargs))
        return graph_module.forward

    torch._dynamo.reset()
    out = torch.compile(model, backend=inspect)(**inputs)
    return calls, out


def test_compiled_training_keeps_causal_sdpa_without_a_mask():
    """Under torch.compile transformers builds a seq x seq mask for plain "sdpa" (it cannot tell whether position
    ids pack documents); the recipe's causal SDPA keeps is_causal=True, and gives the same logits and loss."""
    cfg = load_config(None, TINY)
    config = build_llama_config(cfg)
    ids = torch.randint(0, 1000, (2, 32))
    results = {}
    for attn in ("sdpa", choose_attn_implementation("sdpa")):
        torch.manual_seed(0)
        model = build_model(cfg, config, attn)
        model.config.use_cache = False
        results[attn] = sdpa_calls_when_compiled(model, input_ids=ids, labels=ids)
    plain_calls, plain = results["sdpa"]
    causal_calls, causal = results[CAUSAL_SDPA]
    assert len(plain_calls) == len(causal_calls) == 2  # one per layer
    assert all(call["attn_mask"] is not None and not call["is_causal"] for call in plain_calls)
    assert all(call["attn_mask"] is None and call["is_causal"] for call in causal_calls)
    torch.testing.assert_close(causal.logits, plain.logits)
    torch.testing.assert_close(causal.loss, plain.loss)


def test_causal_sdpa_still_masks_padding_and_generates_like_sdpa(tokenizer):
    """With an attention mask (generation, padded batches) the recipe's SDPA is transformers' own."""
    cfg = load_config(None, TINY)
    models = {}
    for attn in ("sdpa", choose_attn_implementation("sdpa")):
        torch.manual_seed(0)
        models[attn] = build_model(cfg, build_llama_config(cfg), attn).eval()
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(["ROMEO:", "To be, or not to be"], return_tensors="pt", padding=True)
    outputs = [
        model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        for model in models.values()
    ]
    assert torch.equal(outputs[0], outputs[1])


def test_building_the_model_leaves_the_config_untouched():
    cfg = load_config(
        None,
        [
            "model.num_hidden_layers=1",
            "model.hidden_size=64",
            "model.intermediate_size=64",
            "model.num_attention_heads=4",
            "model.num_key_value_heads=2",
        ],
    )
    config = build_llama_config(cfg)
    before = copy.deepcopy(config.to_dict())
    model = build_model(cfg, config, "eager")
    assert config.to_dict() == before
    assert model.config._attn_implementation == "eager"


def test_flops_per_token_counts_weights_and_attention():
    from recipe.model import flops_per_token

    # 6N + 12·L·d·T for SmolLM2-135M at 2,048 tokens
    assert flops_per_token(134_515_008, 30, 576, 2048) == 6 * 134_515_008 + 12 * 30 * 576 * 2048 == 1_231_763_328


def test_final_model_is_saved_from_the_gathered_state_dict(tmp_path, cache_dir, monkeypatch):
    """Trainer.save_model writes no weights when FSDP saves sharded state dicts (seen on an H100 with
    accelerate/fsdp.yaml): final/ is written from accelerate's gathered state dict, whatever the sharding."""
    from recipe import arguments
    from recipe.trainer import RecipeTrainer

    from conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tmp_path / "run", cache_dir))
    args = arguments.build_training_arguments(cfg, eval_strategy="no", quiet=True)
    model = build_model(cfg, build_llama_config(cfg), "sdpa")
    trainer = RecipeTrainer(model=model, args=args)
    gathered = {k: v.clone() + 1 for k, v in model.state_dict().items()}  # what the other ranks would add
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", lambda m: gathered)
    final = trainer.save_final(cfg.to_dict(), {"run_id": "test"})
    reloaded = AutoModelForCausalLM.from_pretrained(final).state_dict()
    for name, tensor in gathered.items():
        assert torch.equal(reloaded[name], tensor), name
    assert not list((tmp_path / "run").glob(".final*"))  # the temporary folder was renamed


def test_init_from_loads_saved_weights_with_the_recipes_attention(tmp_path):
    """init_from (continued pretraining) loads weights through from_pretrained with the recipe's causal SDPA."""
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    saved = build_model(cfg, build_llama_config(cfg), "sdpa")
    saved.save_pretrained(tmp_path / "weights")
    cfg = load_config(None, [*TINY, f"init_from={tmp_path / 'weights'}"])
    model = build_model(cfg, build_llama_config(cfg), choose_attn_implementation("sdpa"))
    assert model.config._attn_implementation == CAUSAL_SDPA
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_shapes_are_checked_both_ways():
    from recipe.cli import RecipeError
    from recipe.model import check_shapes

    import pytest

    expected = {"a": torch.empty(2, 3), "lm_head.weight": torch.empty(4)}
    check_shapes(expected, {"a": torch.empty(2, 3)}, "checkpoint-4")  # a tied head need not be stored
    with pytest.raises(RecipeError, match=r"tensor 'a' has shape \(3, 2\) but the config gives \(2, 3\)"):
        check_shapes(expected, {"a": torch.empty(3, 2)}, "checkpoint-4")
    with pytest.raises(RecipeError, match="has no tensor 'a'"):
        check_shapes(expected, {}, "checkpoint-4")
    with pytest.raises(RecipeError, match="has tensor 'model.layers.2.x' and 1 more, which this model config lacks"):
        check_shapes(expected, {"a": torch.empty(2, 3), "model.layers.2.x": torch.empty(1), "y": torch.empty(1)}, "c")


def test_training_forwards_return_the_loss_only_and_generation_keeps_its_logits():
    """No fp32 copy of the 49,152-wide logits under bf16 autocast: the loss alone comes back with labels, the
    same loss and gradients as the model without the wrapper; without labels the logits are there."""
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(cfg, build_llama_config(cfg), "sdpa")
    plain = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), attn_implementation="sdpa")
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 49152, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = model(input_ids=ids, labels=ids), plain(input_ids=ids, labels=ids)
    assert ours.logits is None and ours["logits"] is None and torch.equal(ours.loss, theirs.loss)
    ours.loss.backward()
    theirs.loss.backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), plain.parameters(), strict=True))
    assert model(input_ids=ids).logits.shape == (2, 16, 49152)
