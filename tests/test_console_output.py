"""One progress display per command: the libraries under it (transformers, tokenizers, DeepSpeed) print no
bars or start-up chatter of their own when a model is built, loaded, saved and put under DeepSpeed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Loading weights", "Writing model shards", "Setting accelerator to CPU", "built successfully")


def test_load_save_and_tokenizer_training_print_no_library_bars(tiny_dir, tmp_path, capfd):
    from rlsd_harness.models import load_model, load_processor, save_model, train_tokenizer

    capfd.readouterr()
    model, processor = load_model(tiny_dir), load_processor(tiny_dir)
    save_model(model, processor, tmp_path / "copy")
    tokenizer = train_tokenizer(["There are 3 red shapes. 3 + 7 = 10."] * 20, vocab_size=300)
    out, err = capfd.readouterr()
    copy = dict(load_model(tmp_path / "copy").named_parameters())
    assert all(torch.equal(copy[n], p) for n, p in model.named_parameters())  # the save really wrote the model
    assert len(tokenizer) > 256
    assert not [n for n in NOISE if n in out + err] and not (out + err).strip(), out + err


def test_deepspeed_is_told_the_cpu_accelerator(monkeypatch):
    from rlsd_harness.dist import name_cpu_accelerator

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    name_cpu_accelerator()
    assert os.environ.get("DS_ACCELERATOR") == (None if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")  # a user's choice stays
    name_cpu_accelerator()
    assert os.environ["DS_ACCELERATOR"] == "cuda"


@pytest.mark.slow  # a fresh interpreter importing torch, transformers and DeepSpeed: 30 s on a loaded machine
def test_a_fresh_process_under_deepspeed_prints_nothing_of_its_own(tiny_dir, tmp_path):
    """In a new process, so that DeepSpeed is imported here for the first time (its accelerator warning
    comes once per process)."""
    script = (
        "import torch\n"
        "from rlsd_harness import dist\n"
        "from rlsd_harness.models import build_tiny, load_model, load_processor, save_model\n"
        "path = build_tiny('qwen2_5_vl', 'tiny', seed=0)\n"
        "model = load_model(path)\n"
        "dist.init_distributed()\n"
        "engine = dist.initialize_engine(model, torch.optim.AdamW(model.parameters()), None,\n"
        "    {'train_micro_batch_size_per_gpu': 1, 'zero_optimization': {'stage': 0}, 'steps_per_print': 10**9})\n"
        f"save_model(engine.module, load_processor(path), {str(tmp_path / 'saved')!r})\n"
        "dist.shutdown()\n"
        "print('done')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["HARNESS_CACHE"] = os.environ["HARNESS_CACHE"]  # the session's, where tiny_dir is already built
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "done", proc.stdout
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr
