"""RLSD's credit picture (the paper's case study): one correct and one wrong rollout of a trained policy, each
token coloured by its evidence weight w_t = exp(sign(A) * (log P_T(y_t) - log P_S(y_t))), clipped to
[1 - eps_w, 1 + eps_w] as the objective uses it. Above 1 (red): more credit (A > 0) or more blame (A < 0).

`rlsd-credit <run folder> [out.png]` — the run must be an RLSD run with a final policy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_model as load_weights

from rlsd_harness.algorithms.grpo import group_advantages
from rlsd_harness.algorithms.rlsd import evidence_weights
from rlsd_harness.data import build_data
from rlsd_harness.models import load_model, load_processor
from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams, encode_prompts, sample_seed
from rlsd_harness.training import checkpoint
from rlsd_harness.training.teacher import reference_contexts
from rlsd_harness.training.trainer import forward_head
from rlsd_harness.verifier import build_verifier


@torch.no_grad()
def token_weights(run_dir: Path, n_prompts: int = 16, group: int = 8) -> list[dict]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    eps_w = float(cfg.algorithm.params.eps_w)
    student = load_model(run_dir / "final").eval()
    processor = load_processor(run_dir / "final")
    teacher = load_model(run_dir / "final").eval()
    ckpt = checkpoint.latest(run_dir)
    if ckpt is not None and (ckpt / "teacher.safetensors").exists():
        load_weights(teacher, ckpt / "teacher.safetensors")
    items = build_data(cfg.data, cfg.seed).test_set(n_prompts)
    params = SamplingParams(n=group, temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens)
    ro = HFRolloutEngine(student, processor).generate(
        items, params, [sample_seed(cfg.seed, 10**6, str(it.id), j) for it in items for j in range(group)])
    verifier = build_verifier(cfg.data.verifier)
    rewards = torch.tensor([verifier(t, items[i // group].answer).reward for i, t in enumerate(ro.texts)])
    adv = group_advantages(rewards, group)
    tprompt, _ = encode_prompts(processor, reference_contexts(items, group, "answer"), [it.images for it in items for _ in range(group)])
    tok_id = student.config.image_token_id
    s_lp = forward_head(student, ro.prompt, ro.vision, ro.response_ids, ro.response_mask, 1.0, tok_id).logp
    t_lp = forward_head(teacher, tprompt, ro.vision, ro.response_ids, ro.response_mask, 1.0, tok_id).logp
    _, w = evidence_weights(adv, s_lp, t_lp, ro.response_mask)
    w = w.clamp(1 - eps_w, 1 + eps_w)
    picks = []
    for want in (1.0, 0.0):  # one correct rollout with A > 0, one wrong with A < 0, from a mixed group
        rows = [r for r in range(len(rewards)) if rewards[r] == want and adv[r] != 0]
        if rows:
            r = rows[0]
            n = int(ro.response_mask[r].sum())
            tokens = [processor.tokenizer.decode([t]) for t in ro.response_ids[r, :n].tolist()]
            picks.append({"correct": bool(want), "advantage": float(adv[r]), "question": items[r // group].question,
                          "tokens": tokens, "weights": w[r, :n].tolist()})
    return picks


def draw(picks: list[dict], out: Path, eps_w: float = 0.2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    cmap, norm = plt.get_cmap("coolwarm"), TwoSlopeNorm(vmin=1 - eps_w, vcenter=1.0, vmax=1 + eps_w)
    fig, axes = plt.subplots(len(picks), 1, figsize=(12, 1.6 * len(picks) + 0.6), squeeze=False)
    for ax, p in zip(axes[:, 0], picks):
        ax.axis("off")
        ax.set_title(f"{'correct' if p['correct'] else 'wrong'} rollout (A = {p['advantage']:+.2f}): {p['question']}",
                     fontsize=9, loc="left")
        x, y = 0.0, 0.6
        for tok, w in zip(p["tokens"], p["weights"]):
            text = "".join(c if c.isprintable() else "?" for c in tok.replace("\n", "\\n")) or " "
            ax.text(x, y, text, fontsize=10, family="monospace", transform=ax.transAxes,
                        bbox=dict(facecolor=cmap(norm(w)), edgecolor="none", pad=1.5))
            x += 0.0085 * max(len(text), 1) + 0.004
            if x > 0.97:
                x, y = 0.0, y - 0.4
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes[:, 0].tolist(), orientation="horizontal", fraction=0.05, pad=0.02, label="clipped w_t")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
