"""The algorithm config files: each builds its objective, has the shape the backbone reads, and holds the
paper's values."""


import pytest
from omegaconf import OmegaConf

from rlsd_harness.algorithms import build_objective
from rlsd_harness.config import CONFIG_DIR as CONFIG_ROOT
from rlsd_harness.training.teacher import teacher_config

CONFIG_DIR = CONFIG_ROOT / "algorithm"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def load(stem: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{stem}.yaml"))


def test_all_expected_configs_exist():
    stems = {p.stem for p in CONFIG_FILES}
    assert {"grpo", "rlsd", "rlsd_released", "opsd", "sdpo", "grpo_opsd", "opd"} <= stems


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_shape_and_objective_builds(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert set(cfg) == {"name", "params", "teacher", "lr", "search_space"}  # search_space: the tuner's ranges
    teacher = teacher_config(cfg["teacher"])  # the backbone's teacher config accepts every key and value
    obj = build_objective(cfg["name"], cfg["params"])
    weights = cfg["teacher"]["weights"]
    if obj.teacher_context == "reference":  # the privileged context is a field every training example has
        assert teacher.hint in ("answer", "solution")
    if obj.teacher_signal == "none":
        assert weights == "none"
    else:
        assert weights in ("frozen", "sync", "ema", "live")
    assert path.read_text().startswith("#"), "each config opens with a comment naming its source"


def test_build_from_an_omegaconf_node_with_nested_params():
    node = OmegaConf.load(CONFIG_DIR / "grpo_opsd.yaml")
    obj = build_objective(node.name, node.params)
    assert obj.cfg.distill_coef == 0.5
    assert obj.cfg.opsd.pointwise_clip == 0.05


def test_rlsd_paper_and_released_settings():
    paper, released = load("rlsd"), load("rlsd_released")
    for cfg in (paper, released):
        assert cfg["params"]["eps_w"] == 0.2 and cfg["params"]["lam"] == 0.5
        assert cfg["params"]["lam_warmup_steps"] == 0
        assert (cfg["params"]["clip_low"], cfg["params"]["clip_high"], cfg["params"]["clip_dual"]) == (0.2, 0.28, 3.0)
        assert cfg["teacher"]["weights"] == "sync"
        assert cfg["teacher"]["hint"] == "answer"  # RLSD's teacher reads only the final answer
    assert (paper["teacher"]["sync_every"], paper["params"]["lam_decay_steps"]) == (10, 50)
    assert (released["teacher"]["sync_every"], released["params"]["lam_decay_steps"]) == (20, 60)


def test_baseline_settings():
    opsd, sdpo = load("opsd"), load("sdpo")
    assert (opsd["params"]["beta"], opsd["params"]["pointwise_clip"], opsd["teacher"]["weights"]) == (0.0, 0.05, "frozen")
    assert (sdpo["params"]["alpha"], sdpo["params"]["topk"], sdpo["params"]["is_clip"]) == (0.5, 100, 2.0)
    assert (sdpo["teacher"]["weights"], sdpo["teacher"]["ema_rate"]) == ("ema", 0.05)
    assert sdpo["teacher"]["include_own_success"] is False
    assert opsd["lr"] == sdpo["lr"] == 1e-5
    assert opsd["teacher"]["hint"] == load("grpo_opsd")["teacher"]["hint"] == "solution"  # OPSD reads a reasoning trace
    assert load("grpo")["lr"] is None and load("rlsd")["lr"] is None
