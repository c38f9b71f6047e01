"""End to end on CPU: a tiny model of the real YAML trains, evaluates, samples, checkpoints and resumes."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import train
from recipe import run_folder
from recipe.run_folder import checkpoint_step

import pytest
import torch
from conftest import CORPUS, ROOT, read_until, tiny_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

pytestmark = pytest.mark.slow


def history(output_dir):
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def losses_and_lrs(output_dir):
    return [(h["step"], h["loss"], h["learning_rate"]) for h in history(output_dir) if "loss" in h]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs") / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=12)
    assert train.main(overrides) == 0
    return out, overrides


def test_loss_falls_and_everything_is_written(trained_run):
    out, _ = trained_run
    losses = [loss for _, loss, _ in losses_and_lrs(out)]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0
    assert all(h["tokens_per_second"] > 0 for h in history(out) if "loss" in h)
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-6", "checkpoint-12"}
    evals = [h for h in history(out) if "eval_loss" in h]
    assert [h["step"] for h in evals] == [6, 12]
    assert all(math.isclose(h["eval_perplexity"], math.exp(h["eval_loss"]), rel_tol=1e-6) for h in evals)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [6, 12]
    assert all(set(s) == {"step", "prompt", "completion"} and s["completion"] for s in samples)
    assert len(samples) == 2 * 3  # three prompts


def test_final_model_loads_offline_with_cache_on(trained_run):
    out, _ = trained_run
    final = out / "final"
    assert (final / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.use_cache is True
    assert sum(p.numel() for p in model.parameters()) == 49152 * 64 + 2 * 36992 + 64
    ids = tokenizer("ROMEO:", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    assert not (out / ".final.tmp").exists()


class RecordOptimizerLR(TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append((state.global_step, [g["lr"] for g in optimizer.param_groups]))


def test_resume_drops_lr_tenfold(trained_run, tmp_path, capsys):
    out, overrides = trained_run
    resumed = tmp_path / "run"
    shutil.copytree(out, resumed)
    overrides = [o.replace(str(out), str(resumed)) for o in overrides] + ["resume.extra_steps=6"]
    final_before = (resumed / "final" / "model.safetensors").stat().st_mtime_ns
    recorder = RecordOptimizerLR()
    assert train.main(["--resume", *overrides], extra_callbacks=[recorder]) == 0
    assert "resuming from checkpoint-12 (step 12) for 6 steps at lr 0.0003" in capsys.readouterr().out
    new = [(s, lr) for s, _, lr in losses_and_lrs(resumed) if s > 12]
    assert [s for s, _ in new] == list(range(13, 19))
    assert all(lr == pytest.approx(3.0e-4, rel=1e-12) for _, lr in new)  # logged
    assert [s for s, _ in recorder.lrs] == list(range(13, 19))
    assert all(all(lr == pytest.approx(3.0e-4, rel=1e-12) for lr in lrs) for _, lrs in recorder.lrs)  # used
    assert (resumed / "checkpoint-18").is_dir()
    assert (resumed / "final" / "model.safetensors").stat().st_mtime_ns != final_before
    samples = [json.loads(line) for line in (resumed / "samples.jsonl").read_text().splitlines()]
    assert 18 in {s["step"] for s in samples}
    # the configured intervals hold in the resumed phase, not the checkpoint's
    assert [h["step"] for h in history(resumed) if "eval_loss" in h] == [6, 12, 18]


class InterruptAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives during step `self.step`


def test_crash_recovery_is_exact_and_interruption_saves_a_checkpoint(tmp_path, cache_dir, capsys):
    settings = dict(max_steps=10, save_steps=100, eval_steps=5)
    straight = tmp_path / "straight"
    assert train.main(tiny_overrides(straight, cache_dir, **settings)) == 0

    broken = tmp_path / "broken"
    overrides = tiny_overrides(broken, cache_dir, **settings)
    assert train.main(overrides, extra_callbacks=[InterruptAt(5)]) == train.EXIT_INTERRUPTED
    assert "saved checkpoint-5" in capsys.readouterr().out
    assert [p.name for p in broken.glob("checkpoint-*")] == ["checkpoint-5"]
    assert not (broken / "final").exists()

    assert train.main(["--resume", *overrides]) == 0
    assert "resuming from checkpoint-5 (step 5): continuing the main phase to step 10 on its own schedule" in (
        capsys.readouterr().out
    )
    expected, got = losses_and_lrs(straight), losses_and_lrs(broken)
    assert [s for s, _, _ in got] == list(range(1, 11))
    for (s1, loss1, lr1), (s2, loss2, lr2) in zip(expected, got, strict=True):
        assert s1 == s2 and lr1 == pytest.approx(lr2, rel=1e-9) and loss1 == pytest.approx(loss2, abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(straight / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(broken / "final").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize(
    "workers, streamed, to_group",
    [(0, False, None), (1, True, signal.SIGTERM), (2, False, signal.SIGTERM)],
    ids=["sigterm", "sigterm-to-the-group-streamed-with-a-worker", "sigterm-to-the-group-with-two-workers"],
)
def test_sigterm_from_outside_saves_and_exits(tmp_path, cache_dir, workers, streamed, to_group):
    """SIGTERM to the process (a scheduler), or a signal to the whole process group (a terminal's Ctrl-C, some
    schedulers): dataloader workers must not die first, which would fail the step before the checkpoint."""
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=100000, save_steps=100000, eval_steps=100000)
    overrides += [f"training.dataloader_num_workers={workers}"]
    if streamed:
        overrides += ["data.streaming=true", "data.max_validation_blocks=3"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides, "samples.every_n_steps=0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = read_until(proc)  # training has started
    if to_group:
        os.killpg(proc.pid, to_group)
    else:
        proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == train.EXIT_INTERRUPTED, "".join(lines) + rest
    checkpoints = list(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and checkpoint_step(checkpoints[0]) is not None
    assert "continue with: python train.py --resume" in rest


def test_interactive_terminal_is_offered_the_extra_phase(tmp_path, cache_dir):
    import pty
    import select

    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=4, save_steps=4, eval_steps=4)
    overrides += ["samples.every_n_steps=0", "resume.extra_steps=2"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=tmp_path,
    )
    os.close(follower)
    seen, answered, deadline = b"", False, time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if select.select([leader], [], [], 1)[0]:
            try:
                seen += os.read(leader, 4096)
            except OSError:
                break
        if not answered and b"Continue from checkpoint-4 for 2 more steps at lr/10? [y/N]" in seen:
            os.write(leader, b"y\n")
            answered = True
    proc.wait(timeout=60)
    os.close(leader)
    assert answered, seen.decode(errors="replace")[-2000:]
    assert proc.returncode == 0
    assert b"resuming from checkpoint-4 (step 4) for 2 steps" in seen
    assert (out / "checkpoint-6").is_dir()


def test_no_prompt_without_a_terminal(trained_run):
    args = train.parse_args(["training.max_steps=1"])
    assert not train.should_offer_extra_phase(args)  # pytest's stdin is not a terminal
    assert not train.should_offer_extra_phase(train.parse_args(["--no-prompt"]))


@pytest.mark.parametrize(
    "seek, workers", [(True, 0), (False, 0), (True, 1)], ids=["seek", "replay", "seek-with-a-dataloader-worker"]
)
def test_streamed_run_resumes_exactly(tmp_path, cache_dir, capsys, monkeypatch, seek, workers):
    """A streamed run interrupted at step 5 and resumed trains on the same blocks as an unbroken one: by
    seeking the stream to the checkpoint's position, or, without one, by replaying the stream; with the
    stream read in the main process or in a dataloader worker."""
    from recipe import streaming

    monkeypatch.setattr(streaming.StreamedBlocks, "WINDOW", 7)  # windows and passes end inside the run
    corpus = tmp_path / "small.txt"
    corpus.write_text(open(CORPUS).read()[:8_000])  # about 30 blocks: the run wraps
    stream = [f"data.path={corpus}", "data.streaming=true", "data.sample_by=paragraph", "data.max_validation_blocks=3"]
    settings = dict(max_steps=10, save_steps=100, eval_steps=5, dataloader_num_workers=workers)
    straight = tmp_path / "straight"
    assert train.main(tiny_overrides(straight, cache_dir, **settings) + stream) == 0

    broken = tmp_path / "broken"
    overrides = tiny_overrides(broken, cache_dir, **settings) + stream
    assert train.main(overrides, extra_callbacks=[InterruptAt(5)]) == train.EXIT_INTERRUPTED
    state_file = broken / "checkpoint-5" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    run = state["stateful_callbacks"]["RunRecordCallback"]["attributes"]
    assert [p["block"] for p in run["stream_positions"]] == [5 * 4]
    if not seek:  # a checkpoint saved without a stream position: the stream is replayed up to it
        run["stream_positions"] = None
        state_file.write_text(json.dumps(state))
        run_folder.write_manifest(state_file.parent)
    capsys.readouterr()
    assert train.main(["--resume", *overrides]) == 0
    out = capsys.readouterr().out
    if seek:
        assert "streaming: continuing at block 20 of the stream without reading what came before it" in out
    else:
        assert "checkpoint-5 holds no stream position; replaying the stream up to it" in out
    for (s1, loss1, _), (s2, loss2, _) in zip(losses_and_lrs(straight), losses_and_lrs(broken), strict=True):
        assert s1 == s2 and loss1 == pytest.approx(loss2, abs=1e-5)


def test_document_aware_training_runs(tmp_path, cache_dir):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=2, save_steps=2, eval_steps=2) + ["data.document_aware=true"]
    assert train.main([*overrides, "samples.every_n_steps=0"]) == 0
    assert all(math.isfinite(h["loss"]) for h in history(out) if "loss" in h)
    assert any("eval_loss" in h for h in history(out))


def test_compiled_training_runs_end_to_end(tmp_path, cache_dir):
    """training.torch_compile through the Trainer: a compiled step, an evaluation, samples from the compiled
    model, and a final model that loads (no `_orig_mod.` names). The graph itself, with the recipe's causal SDPA,
    is test_model.py's; here the aot_eager backend traces forward and backward without inductor's C++ build,
    which is what made this test take minutes."""
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=1, save_steps=1, eval_steps=1, torch_compile="true")
    overrides += ["training.torch_compile_backend=aot_eager", "samples.every_n_steps=1", "samples.max_new_tokens=4"]
    assert train.main(overrides) == 0
    assert all(math.isfinite(h["loss"]) for h in history(out) if "loss" in h)
    assert any("eval_loss" in h for h in history(out)) and (out / "samples.jsonl").read_text().strip()
    AutoModelForCausalLM.from_pretrained(out / "final")


@pytest.mark.parametrize("native", ["AMX", None], ids=["native-bf16", "no-native-bf16"])
def test_both_precision_paths_train_on_any_cpu(native, tmp_path, cache_dir, capsys, monkeypatch):
    """The bf16 check's answer is forced, so both paths run whatever this CPU has."""
    from recipe import arguments

    monkeypatch.setattr(arguments, "cpu_bf16_support", lambda: native)
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=2, save_steps=2, eval_steps=2) + ["samples.every_n_steps=0"]
    seen = set()

    class RecordMatmulDtype(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layer = model.model.layers[0].mlp.down_proj
            layer.register_forward_hook(
                lambda module, inputs, output: seen.add(output.dtype) if module.training else None
            )

    assert train.main(overrides, extra_callbacks=[RecordMatmulDtype()]) == 0
    expected = "bf16 autocast on CPU (this CPU has AMX)" if native else "fp32 on CPU (this CPU has no native bf16"
    assert f"precision: {expected}" in capsys.readouterr().out
    assert seen == ({torch.bfloat16} if native else {torch.float32})  # what the training matmuls ran in
    assert all(math.isfinite(h["loss"]) for h in history(out) if "loss" in h)


def test_ctrl_c_during_the_final_save_still_saves_it(tmp_path, cache_dir, capsys):
    class CtrlCAtTheEnd(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=2, save_steps=2, eval_steps=2) + ["samples.every_n_steps=0"]
    assert train.main(overrides, extra_callbacks=[CtrlCAtTheEnd()]) == 0
    assert "training is done; finishing the save of final/ first" in capsys.readouterr().err
    assert (out / "final" / "model.safetensors").is_file() and not list(out.glob(".final*"))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant_with_warmup"])
def test_another_schedule_is_one_override(schedule, tmp_path, cache_dir):
    """Only the chosen schedule's kwargs reach it, so switching schedules needs nothing else."""
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=4, save_steps=4, eval_steps=4, lr_scheduler_type=schedule)
    assert train.main([*overrides, "samples.every_n_steps=0"]) == 0
    lrs = [h["learning_rate"] for h in history(out) if "loss" in h]
    assert lrs[0] == 0.0 and max(lrs) > 0  # warm-up from zero, then the schedule
    if schedule == "constant_with_warmup":
        assert lrs[-1] == max(lrs)
    else:
        assert lrs[-1] < max(lrs)
