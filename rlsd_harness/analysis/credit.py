"""RLSD's credit picture (the paper's case study): one correct and one wrong rollout of a trained policy, each
token coloured by its evidence weight w_t = exp(sign(A) * (log P_T(y_t) - log P_S(y_t))), clipped to
[1 - eps_w, 1 + eps_w] as the objective uses it. Above 1 (red): more credit (A > 0) or more blame (A < 0).

`rlsd-credit run=<a finished RLSD run with its final/ weights>` draws it from the policy; `rlsd-credit
study=<a comparison folder>` redraws the study's recorded picture (credit_rlsd.json) when its runs keep no
weights, as a committed study's do. `study_credit` is the comparison's (and rlsd-report's) step.
"""

from __future__ import annotations

import json
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
from rlsd_harness.training.durable import atomic_path, atomic_write_text
from rlsd_harness.training.teacher import context_images, reference_contexts
from rlsd_harness.training.trainer import forward_head
from rlsd_harness.verifier import build_verifier

PICTURE, RECORD = "credit_rlsd.png", "credit_rlsd.json"


def has_weights(run_dir: Path) -> bool:
    """A run whose final policy is on disk (a packed, committed run keeps its records, not its weights)."""
    final = Path(run_dir) / "final"
    return (final / "config.json").is_file() and any(final.glob("*.safetensors"))


def eps_w_of(run_dir: Path) -> float:
    """The w clip of an RLSD run's config (the colour scale's range)."""
    return float(OmegaConf.load(Path(run_dir) / "config.yaml").algorithm.params.eps_w)


def run_picks(run_dir: Path) -> list[dict]:
    """token_weights of one finished RLSD run, or a one-line error saying what it lacks."""
    from rlsd_harness.config import ConfigError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    algorithm = OmegaConf.load(run_dir / "config.yaml").algorithm.name
    if algorithm != "rlsd":
        raise ConfigError(f"{run_dir} is a {algorithm} run; the credit picture shows RLSD's evidence weights: give an "
                          f"rlsd run")
    if not has_weights(run_dir):
        study = run_dir.parent.parent
        hint = (f"; to redraw its study's recorded picture: rlsd-credit study={study}"
                if (study / RECORD).is_file() else "")
        raise FileNotFoundError(f"{run_dir} keeps no final weights (final/*.safetensors; a committed study's runs are "
                                f"packed without them): the picture needs the trained policy{hint}")
    return token_weights(run_dir)


def _trained_rlsd(run_dir: Path) -> bool:
    """The run's resolved config is an RLSD training run's (a folder of another shape has nothing to draw)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    return OmegaConf.select(cfg, "algorithm.name", default=None) == "rlsd"


def study_picks(folder: Path) -> tuple[list[dict], float, str]:
    """(picks, eps_w, where they come from) of a comparison folder: from the first RLSD run whose final weights
    exist, else the recorded credit_rlsd.json (a committed study keeps no weights); a one-line error with
    neither."""
    folder = Path(folder)
    runs = sorted(p for p in (folder / "runs").glob("rlsd-s*") if (p / "config.yaml").is_file())
    weighted = [p for p in runs if has_weights(p) and _trained_rlsd(p)]
    if weighted:
        return token_weights(weighted[0]), eps_w_of(weighted[0]), f"drawn from {weighted[0].name}'s final policy"
    if runs and (folder / RECORD).is_file():
        return (json.loads((folder / RECORD).read_text()), eps_w_of(runs[0]),
                f"redrawn from the recorded {RECORD} (the runs keep no weights)")
    raise FileNotFoundError(f"no credit picture: no RLSD run in {folder / 'runs'} keeps its final weights "
                            f"(final/*.safetensors) and there is no {folder / RECORD} to redraw from")


def study_credit(folder: Path) -> str | None:
    """Write a comparison's credit picture, `<folder>/credit_rlsd.json` and `.png` (study_picks), and say how
    in one line (None for a study without RLSD runs; with neither weights nor a record, the line says what is
    missing and nothing is written). The json goes first, the png last, each complete or absent (a kill in
    between leaves the json, which the next call redraws from)."""
    folder = Path(folder)
    if not any((folder / "runs").glob("rlsd-s*/config.yaml")):
        return None
    try:
        picks, eps_w, source = study_picks(folder)
    except FileNotFoundError as e:
        return str(e)
    if source.startswith("drawn"):
        atomic_write_text(folder / RECORD, json.dumps(picks, indent=1) + "\n")
    if not picks:  # none when no response of the probe batch was rewarded
        return f"no credit picture: no rollout of the probe batch had a non-zero advantage ({source})"
    draw(picks, folder / PICTURE, eps_w)
    return f"credit picture {folder / PICTURE}: {source}"


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
    # the teacher's images: the student's, then any only the teacher sees (data.privileged=image_hint, teacher_images)
    tprompt, tvision = encode_prompts(processor, reference_contexts(items, group, "answer"),
                                      [context_images(it) for it in items for _ in range(group)])
    tok_id = student.config.image_token_id
    s_lp = forward_head(student, ro.prompt, ro.vision, ro.response_ids, ro.response_mask, 1.0, tok_id).logp
    t_lp = forward_head(teacher, tprompt, tvision, ro.response_ids, ro.response_mask, 1.0, tok_id).logp
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
    with atomic_path(out) as tmp:  # complete or absent: a study's rerun redraws a missing picture
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
