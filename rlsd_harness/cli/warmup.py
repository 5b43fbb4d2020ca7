"""`rlsd-warmup [model=... data.level=...]`: build (or reuse from the cache) the warmed-up base policy of a config
and print its held-out pass@1 on plain prompts, with the privileged hint, and with a blank image."""

from __future__ import annotations

import json

from rlsd_harness.cli import run_main, split_args


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness.config import ConfigError, compose_config, source_of
    from rlsd_harness.data import build_data
    from rlsd_harness.evaluation.heldout import evaluate_items
    from rlsd_harness.models import load_model, load_processor
    from rlsd_harness.training.preflight import check_config
    from rlsd_harness.training.warmup import policy_path

    def body() -> None:
        _, overrides = split_args(argv, "rlsd-warmup", __doc__, {})
        cfg = compose_config(overrides)
        check_config(cfg, only=("seed", "model", "data"))
        if not cfg.model.get("warmup"):
            raise ConfigError(f"model.warmup=null ({source_of(cfg, 'model.warmup')}): there is no warm-up to build; "
                              f"use a model with one (model=tiny, model=tiny_qwen3vl)")
        path = policy_path(cfg.model, cfg.data)
        report = json.loads((path / "warmup.json").read_text())
        items = build_data(cfg.data, cfg.seed).test_set()
        model, processor = load_model(path).eval(), load_processor(path)
        for variant in ("plain", "hint", "blank"):
            report[f"pass@1_{variant}"] = evaluate_items(model, processor, items, variant=variant)["accuracy"]
        print(json.dumps(report, indent=1))

    run_main(body)


if __name__ == "__main__":
    main()
