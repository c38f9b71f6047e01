"""Where the time of one training micro-batch goes: the real model, forward + backward, bf16 autocast on a GPU.

    python benchmarks/profile_step.py                           # GPU: 8 x 2048 tokens, with CUDA kernel tables
    python benchmarks/profile_step.py --batch 1 --seq 1024      # also runs on CPU (fp32, compiled rows only)

On a GPU it times the micro-batch eagerly (the whole model, the backbone without the LM head and loss, and
SDPA held to one backend) and prints the CUDA kernels that take the most time. On both it then times it
compiled with torch.compile twice, in the same process: with transformers' "sdpa" (which builds an explicit
seq x seq causal mask under compile) and with the recipe's causal SDPA (no mask, `is_causal=True`). The
figures of BENCHMARKS.md's profile section come from this script.
"""

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recipe import model as modeling  # noqa: E402
from recipe.config import load_config  # noqa: E402
from recipe.model import flops_per_token, peak_bf16_flops  # noqa: E402


def forward_backward(model, ids, backbone_only=False):
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=ids.is_cuda):
        if backbone_only:
            loss = model.model(input_ids=ids).last_hidden_state.float().pow(2).mean()
        else:
            loss = model(input_ids=ids, labels=ids).loss
    loss.backward()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def report(name, fn, ids, flops, peak, repeats):
    start = time.perf_counter()
    fn()  # compiles, for the compiled rows
    synchronize(ids.device)
    first = time.perf_counter() - start
    for _ in range(2):
        fn()
    synchronize(ids.device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(ids.device)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    tokens = ids.numel() / median
    line = f"{name}: {median * 1000:.1f} ms per micro-batch, {tokens:,.0f} tokens/s"
    if peak:
        line += f", MFU {tokens * flops / peak:.1%}"
    if ids.is_cuda:
        line += f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GB"
        torch.cuda.reset_peak_memory_stats()
    print(f"{line} (first call {first:.1f} s)", flush=True)


def kernel_table(fn, rows):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))


def build(cfg, config, attn, device):
    torch.manual_seed(0)
    model = modeling.build_model(cfg, config, attn).to(device).train()
    model.config.use_cache = False
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config()
    config = modeling.build_llama_config(cfg)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in modeling.build_meta_model(config).parameters())
    flops = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, args.seq)
    peak = peak_bf16_flops(device)
    print(f"{device.type}: micro-batch {args.batch} x {args.seq}, median of {args.repeats}", flush=True)

    if device.type == "cuda":
        model = build(cfg, config, "sdpa", device)
        report("eager", lambda: forward_backward(model, ids), ids, flops, peak, args.repeats)
        report(
            "eager, backbone only (no LM head, no loss)",
            lambda: forward_backward(model, ids, True),
            ids,
            flops,
            peak,
            args.repeats,
        )
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            with sdpa_kernel(backend):
                report(
                    f"eager, SDPA held to {backend.name}",
                    lambda: forward_backward(model, ids),
                    ids,
                    flops,
                    peak,
                    args.repeats,
                )
        kernel_table(lambda: forward_backward(model, ids), rows=22)
        del model

    for attn, label in (
        ("sdpa", "transformers' sdpa: explicit causal mask"),
        (modeling.choose_attn_implementation("sdpa"), "the recipe's causal SDPA: no mask"),
    ):
        torch._dynamo.reset()
        step = partial(forward_backward, torch.compile(build(cfg, config, attn, device)), ids)
        report(f"torch.compile (whole model), {label}", step, ids, flops, peak, args.repeats)
        if device.type == "cuda":
            kernel_table(step, rows=16)


if __name__ == "__main__":
    main()
