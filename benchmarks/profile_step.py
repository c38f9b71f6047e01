"""Where the time of one training micro-batch goes on a GPU: the real model, 8 x 2048 tokens, bf16 autocast.

    python benchmarks/profile_step.py

Times forward + backward eagerly (the whole model, the backbone without the LM head and loss, and SDPA held
to one backend), then compiled with torch.compile, and prints the CUDA kernels that take the most time for
each. The figures of BENCHMARKS.md's profile section come from this script.
"""

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from callbacks import flops_per_token, peak_bf16_flops  # noqa: E402
from config import load_config  # noqa: E402

BATCH, SEQ = 8, 2048


def forward_backward(model, ids, backbone_only=False):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        if backbone_only:
            loss = model.model(input_ids=ids).last_hidden_state.float().pow(2).mean()
        else:
            loss = model(input_ids=ids, labels=ids).loss
    loss.backward()


def report(name, fn, flops, peak, repeats=6):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    tokens = BATCH * SEQ / median
    memory = torch.cuda.max_memory_allocated() / 2**30
    print(f"{name}: {median * 1000:.1f} ms per micro-batch, {tokens:,.0f} tokens/s, MFU {tokens * flops / peak:.1%}, "
          f"peak {memory:.1f} GB", flush=True)  # fmt: skip
    torch.cuda.reset_peak_memory_stats()


def kernel_table(fn, rows):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))


def main():
    if not torch.cuda.is_available():
        sys.exit("error: profile_step.py profiles CUDA kernels and needs a GPU; on CPU use bench.py")
    cfg = load_config()
    config = train.build_llama_config(cfg)
    torch.manual_seed(0)
    model = train.build_model(cfg, config, "sdpa").cuda().train()
    model.config.use_cache = False
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), device="cuda")
    n_params = sum(p.numel() for p in model.parameters())
    flops = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, SEQ)
    peak = peak_bf16_flops(torch.device("cuda")) or 989e12
    report("eager", lambda: forward_backward(model, ids), flops, peak)
    report("eager, backbone only (no LM head, no loss)", lambda: forward_backward(model, ids, True), flops, peak)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        with sdpa_kernel(backend):
            report(f"eager, SDPA held to {backend.name}", lambda: forward_backward(model, ids), flops, peak)
    kernel_table(lambda: forward_backward(model, ids), rows=22)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model)
    report("torch.compile (whole model)", lambda: forward_backward(compiled, ids), flops, peak)
    kernel_table(lambda: forward_backward(compiled, ids), rows=16)


if __name__ == "__main__":
    main()
