"""What the checkpoints' content hashes cost: a SmolLM2-135M checkpoint saved as the Trainer saves it (safetensors
weights, the AdamW state with torch.save), then run_folder.write_manifest (at every save) and
run_folder.damaged_file (at --resume) over it, in one process, three times each.

    python benchmarks/checkpoint_hashes.py                  # the 135M model of config_smollm2_135M.yaml
    python benchmarks/checkpoint_hashes.py --config config_quickstart.yaml
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recipe import model as modeling  # noqa: E402
from recipe import run_folder  # noqa: E402
from recipe.config import load_config  # noqa: E402


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    cfg = load_config(parser.parse_args().config)
    model = modeling.build_model(cfg, modeling.build_llama_config(cfg), "sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # two moments per parameter, as in a real checkpoint
    saves, hashes, checks = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(3):
            folder = Path(tmp) / f"checkpoint-{i}"
            saves.append(
                timed(
                    lambda f=folder: (model.save_pretrained(f), torch.save(optimizer.state_dict(), f / "optimizer.pt"))
                )
            )
            hashes.append(timed(lambda f=folder: run_folder.write_manifest(f)))
            checks.append(timed(lambda f=folder: run_folder.damaged_file(f)))
        size = run_folder.bytes_in(folder) / 2**30
    save, hashing, check = (statistics.median(x) for x in (saves, hashes, checks))
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters, a checkpoint of {size:.2f} GiB (median of 3)")
    print(f"save (safetensors + torch.save of AdamW): {save:.2f} s")
    print(
        f"content hashes at the save (write_manifest): {hashing:.2f} s = {hashing / save:.0%} of the save, "
        f"{size / hashing:.1f} GiB/s"
    )
    print(f"verification at --resume (damaged_file): {check:.2f} s")


if __name__ == "__main__":
    main()
