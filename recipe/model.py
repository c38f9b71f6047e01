"""The model: a `LlamaConfig` from the YAML's `model:` section, and a `LlamaForCausalLM` built from it.

Around them, what train.py and benchmarks/ need: the model on the meta device (checks that cost no memory) or
from `init_from` weights, tensor shapes checked both ways against a checkpoint, the parameter breakdown, the
attention implementation (with the recipe's causal SDPA), and estimates of the training FLOPs and peak memory.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from recipe.cli import RecipeError, first_line, hub_is_reachable, log
from recipe.config import RecipeConfig

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_flash_attention_utils import FLASH_ATTN_KERNEL_FALLBACK
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available, is_kernels_available

# --- config and model ----------------------------------------------------------------------------


def build_llama_config(cfg: RecipeConfig, tokenizer=None) -> LlamaConfig:
    """The LlamaConfig of the YAML, validated by transformers (e.g. heads that do not divide the hidden size)."""
    try:
        config = LlamaConfig(**cfg.model)  # validated as it is built
    except Exception as e:  # transformers' strict dataclass validation raises its own error types
        problem = " ".join(line.strip() for line in str(e).strip().splitlines()) or type(e).__name__
        raise RecipeError(f"model: {problem}; fix the model section of the YAML or the override") from None
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise RecipeError(
            f"the tokenizer has {len(tokenizer):,} tokens but model.vocab_size is {config.vocab_size:,}: "
            f"set model.vocab_size={len(tokenizer)} or use the matching tokenizer"
        )
    return config


def build_model(cfg: RecipeConfig, config: LlamaConfig, attn_implementation: str, from_weights: bool = True):
    """A LlamaForCausalLM from scratch (or from `init_from` weights), in fp32: the Trainer autocasts.
    No KV cache while training: it would only hold tensors, and it turns off the packed-document masks of
    data.document_aware; saving the final model turns it back on for generation."""
    try:
        if cfg.init_from and from_weights:
            model = load_init_weights(cfg.init_from, config, attn_implementation)
        else:  # from_config writes the attention choice into the config it is given: hand it a copy
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=attn_implementation)
    except Exception as e:  # a Hub kernel that cannot load: no network, no build for this GPU
        if attn_implementation not in FLASH_ATTENTION and "/" not in attn_implementation:
            raise
        sdpa = use_sdpa(cfg.data.document_aware, f"{attn_implementation} could not load: {first_line(e)}")
        return build_model(cfg, config, sdpa, from_weights)
    model.config.use_cache = False
    model.forward = return_the_loss_only(model.forward)
    return model


def return_the_loss_only(forward):
    """With labels (training and evaluation), the Trainer reads the loss alone; the logits beside it, 49,152 wide,
    accelerate would copy to fp32 under bf16 autocast for nothing: 200 MB a micro-batch on the quickstart, 3 GB
    at 8 x 2,048 tokens. Generation passes no labels and gets its logits; saved models do not keep this."""

    @functools.wraps(forward)
    def loss_only(*args, **kwargs):
        outputs = forward(*args, **kwargs)
        if kwargs.get("labels") is not None:
            outputs["logits"] = None  # as an item: a ModelOutput's attribute set to None leaves the item in place
        return outputs

    return loss_only


def build_meta_model(config: LlamaConfig):
    """The model with no memory behind its tensors: names, shapes and the parameter count, in milliseconds."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(copy.deepcopy(config))


def load_init_weights(name_or_path: str, config: LlamaConfig, attn_implementation: str):
    offline = not Path(name_or_path).expanduser().exists() and not hub_is_reachable()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, attn_implementation=attn_implementation, dtype=torch.float32, local_files_only=offline
        )
    except Exception as e:
        raise RecipeError(f"could not load init_from weights '{name_or_path}' ({type(e).__name__}): {e}") from None
    check_shapes(build_meta_model(config).state_dict(), model.state_dict(), f"init_from '{name_or_path}'")
    log(f"model: starting from the weights of {name_or_path}")
    return model


TIED = {"lm_head.weight"}  # tied to the embedding: present or not, it is the same tensor


def check_shapes(expected: dict, found: dict, where: str) -> None:
    """Every tensor of the model is in `found` with its shape, and `found` has no tensor the model lacks."""
    for name, tensor in expected.items():
        if name not in found and name not in TIED:
            raise RecipeError(f"{where} has no tensor '{name}': it was not made with this model config")
        if name in found and tuple(found[name].shape) != tuple(tensor.shape):
            raise RecipeError(
                f"{where}: tensor '{name}' has shape {tuple(found[name].shape)} but the config gives "
                f"{tuple(tensor.shape)}; use the config it was trained with"
            )
    extra = sorted(set(found) - set(expected) - TIED)
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise RecipeError(
            f"{where} has tensor '{extra[0]}'{more}, which this model config lacks; use the config it was trained with"
        )


def parameter_breakdown(model) -> str:
    """The parameter count, split the way the seeds print it; a tied head adds nothing."""
    inner = model.model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    blocks = [count(layer) for layer in inner.layers]
    tied = model.lm_head.weight is inner.embed_tokens.weight
    head = 0 if tied else model.lm_head.weight.numel()
    layer = inner.layers[0]
    vocab, hidden = inner.embed_tokens.weight.shape
    lines = [
        f"model: LlamaForCausalLM with {count(model):,} parameters",
        f"  embedding      {count(inner.embed_tokens):>13,}  ({vocab:,} x {hidden})",
        f"  {len(blocks)} blocks      {sum(blocks):>13,}  ({blocks[0]:,} each: attention {count(layer.self_attn):,}, "
        f"MLP {count(layer.mlp):,}, norms {count(layer.input_layernorm) + count(layer.post_attention_layernorm):,})",
        f"  final norm     {count(inner.norm):>13,}",
        f"  lm head        {head:>13,}  ({'tied to the embedding' if tied else 'untied'})",
    ]
    return "\n".join(lines)


# --- attention -----------------------------------------------------------------------------------


FLASH_ATTENTION = {"flash_attention_2": is_flash_attn_2_available, "flash_attention_3": is_flash_attn_3_available}


def choose_attn_implementation(requested: str, document_aware: bool = False) -> str:
    """What attention to build, said in one `attention:` line: flash-attention where it can run (the flash-attn
    package, else transformers loads the kernel from the Hub through the `kernels` package), a Hub kernel id
    through `kernels`, else SDPA; SDPA over blocks that keep no documents apart is the recipe's causal SDPA."""
    if (requested in FLASH_ATTENTION or "/" in requested) and not torch.cuda.is_available():
        return use_sdpa(document_aware, f"{requested} needs a CUDA GPU")
    if requested in FLASH_ATTENTION and not FLASH_ATTENTION[requested]():
        if not is_kernels_available():
            return use_sdpa(
                document_aware,
                f"flash-attn is not installed; pip install kernels loads {requested} from the Hub instead",
            )
        log(
            f"attention: {requested} from the Hub kernel {FLASH_ATTN_KERNEL_FALLBACK[requested]} (flash-attn is not "
            "installed; the kernels package loads it)"
        )
        return requested
    if "/" in requested and not is_kernels_available():
        return use_sdpa(document_aware, f"the Hub kernel {requested} needs the kernels package: pip install kernels")
    if requested == "sdpa":
        return use_sdpa(document_aware, "as configured")
    log(f"attention: {requested}")
    return requested


def use_sdpa(document_aware: bool, why: str) -> str:
    if document_aware:
        log(f"attention: sdpa (transformers' sdpa, its masks keep the packed documents apart; {why})")
        return "sdpa"
    log(f"attention: {register_causal_sdpa()} (the recipe's causal SDPA; {why})")
    return CAUSAL_SDPA


CAUSAL_SDPA = "sdpa_causal"


def causal_sdpa_mask(*, q_length, kv_length, attention_mask=None, local_size=None, **kwargs):
    """No mask at all for a batch without padding (no attention_mask) and without a cache offset, so SDPA runs
    with is_causal=True on its flash kernels; anything else gets transformers' own SDPA mask.

    transformers decides this itself in eager mode, but under torch.compile it cannot: whether the position
    ids pack several documents is a question about tensor values, so it builds the full seq x seq mask, which
    made attention much slower on an H100 (BENCHMARKS.md). The recipe knows the answer: without
    data.document_aware its batches never carry position ids. transformers passes every argument by name."""
    if attention_mask is None and local_size is None and q_length == kv_length:
        return None
    return sdpa_mask(
        q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, local_size=local_size, **kwargs
    )


def register_causal_sdpa() -> str:
    """SDPA attention with `causal_sdpa_mask`, under its own name so that plain "sdpa" keeps its behaviour;
    the name is not saved with the model (config.json records no attention implementation)."""
    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(CAUSAL_SDPA, causal_sdpa_mask)
    return CAUSAL_SDPA


# --- FLOPs and memory ----------------------------------------------------------------------------

# Peak dense bf16 tensor FLOP/s, matched against torch.cuda.get_device_name() (first match wins: "H200" also
# names a GH200, "A10" an A10G).
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the matmuls with the weights (forward 2N, backward 4N; a tied
    embedding counts once, as the LM head), plus 12·L·d·T for attention scores and values (PaLM, app. B)."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


def estimate_peak_memory(
    config: LlamaConfig, n_params: int, micro_batch: int, seq_len: int, checkpointing: bool
) -> int:
    """Bytes a training step needs at its peak, in bf16 autocast with AdamW: fp32 weights, gradients and two
    optimizer moments (16 bytes a parameter), the activations kept for the backward pass (SDPA keeps no
    seq x seq scores), and the logits with their fp32 loss and gradient. Checked against the peaks an H100
    measured (BENCHMARKS.md) by tests/test_arguments.py."""
    tokens = micro_batch * seq_len
    hidden, ffn = config.hidden_size, config.intermediate_size
    per_layer = 2 * (12 * hidden + 4 * ffn) + 8 * hidden  # bf16 projections and MLP, fp32 norm inputs
    layers = config.num_hidden_layers
    activations = tokens * (2 * hidden * layers + per_layer) if checkpointing else tokens * per_layer * layers
    logits = tokens * config.vocab_size * 12  # bf16 logits and their gradient, fp32 copy for the loss and its gradient
    return 16 * n_params + activations + logits
