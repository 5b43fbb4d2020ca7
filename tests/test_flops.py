"""The ledger's FLOPs formula, on which the matched-compute axis rests: its linear terms against torch's own
count of the model's matrix multiplications, its attention and vision terms against hand numbers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rlsd_harness.models import build_tiny, load_model
from rlsd_harness.training.ledger import ModelShape


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("seq_len", [16, 48])
def test_linear_terms_match_torchs_matmul_count(cache_dir, arch, seq_len):
    model = load_model(build_tiny(arch, "tiny", seed=0)).eval()
    shape = ModelShape.of(model)
    ids = torch.randint(10, 200, (1, seq_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    matmuls = sum(n for op, n in counts.items() if op in ("aten.mm", "aten.addmm", "aten.linear"))
    # torch counts 2 FLOPs per multiply-add of every projection and the output head (its CPU attention kernel is
    # not counted, so the formula's attention term, checked by hand below, is taken off); the formula's linear
    # term also counts the norms' few weights, hence the small tolerance.
    attention = 2 * shape.layers * shape.d_model * seq_len**2
    assert shape.forward_flops(torch.tensor([seq_len]), None) - attention == pytest.approx(matmuls, rel=5e-3)
    assert shape.layers == model.config.text_config.num_hidden_layers


def test_attention_and_vision_terms_by_hand():
    shape = ModelShape(n_text=1000, n_vision=300, layers=2, d_model=8, v_layers=3, v_d_model=4)
    # text: 2 * 1000 * 5 linear + 2 * L * d * S^2 causal attention = 10,000 + 2 * 2 * 8 * 25 = 10,800
    assert shape.forward_flops(torch.tensor([5]), None) == 10_800
    # vision, 6 patches of one image: 2 * 300 * 6 + 4 * 3 * 4 * 36 (full attention) = 3,600 + 1,728
    assert shape.forward_flops(torch.tensor([5]), torch.tensor([6])) == 10_800 + 5_328
    # generation of 3 tokens after a 4-token prompt: 2 * 1000 * 3 + 4 * 2 * 8 * (5 + 6 + 7) = 6,000 + 1,152
    assert shape.generate_flops(torch.tensor([4]), torch.tensor([3])) == 7_152
    # rows add up
    assert shape.forward_flops(torch.tensor([5, 5]), None) == 2 * 10_800
