"""`rlsd-warmup [model=... data.level=...] [rebuild=true] [ship=<name>]`: the warmed-up base policy of a config
(the shipped one when its recipe ships with the package, else built once and cached) and its held-out pass@1
on plain prompts, with the privileged hint, and with a blank image.

rebuild=true warms the recipe up on this machine even when it ships, and says whether this CPU reproduces the
shipped weights (the warm-up's floats depend on the CPU's kernels). ship=<name> (a maintainer's command) also
copies the build into rlsd_harness/bases/<name>/ and lists it in the manifest, for commit."""

from __future__ import annotations

import json

from rlsd_harness.cli import flag, run_main, split_args

OWN = {
    "rebuild": "true: warm up on this machine even when the recipe ships (default false)",
    "ship": "a folder name (Python identifier): rebuild and ship the result as rlsd_harness/bases/<name>/",
}


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness.config import ConfigError, compose_config, schema, source_of
    from rlsd_harness.data import build_data
    from rlsd_harness.evaluation.heldout import evaluate_items
    from rlsd_harness.models import load_model, load_processor, recipe_digest
    from rlsd_harness.training.preflight import check_config
    from rlsd_harness.training.warmup import (
        BASES_DIR,
        read_manifest,
        ship,
        warmed_up,
        warmup_level,
        warmup_recipe,
        weights_sha256,
    )

    def body() -> None:
        own, overrides = split_args(argv, "rlsd-warmup", __doc__, OWN)
        name = own.get("ship")
        if name is not None and not name.isidentifier():
            raise ConfigError(f"ship={name!r} is not a Python identifier (the folder is packaged as one); "
                              f"valid: letters, digits and _, not starting with a digit")
        rebuild = flag(own.get("rebuild"), "rebuild") or name is not None
        cfg = compose_config(overrides)
        check_config(cfg, only=("seed", "model", "data"))
        model_cfg, data_cfg = schema.typed(cfg, "model"), schema.typed(cfg, "data")
        if not model_cfg.warmup:
            raise ConfigError(f"model.warmup=null ({source_of(cfg, 'model.warmup')}): there is no warm-up to build; "
                              f"use a model with one (model=tiny, model=tiny_qwen3vl)")
        if model_cfg.path:
            raise ConfigError(f"model.path={model_cfg.path}: a local checkpoint is not warmed up here; use a built "
                              f"model (model=tiny, model=tiny_qwen3vl)")
        level = warmup_level(data_cfg)
        recipe = warmup_recipe(model_cfg, level)
        path = warmed_up(model_cfg, level, shipped=not rebuild)
        report = json.loads((path / "warmup.json").read_text())
        shipped = read_manifest()["bases"].get(recipe_digest(recipe))
        report.update(folder=str(path), recipe=recipe_digest(recipe), weights_sha256=weights_sha256(path))
        if shipped is not None:
            report["shipped_sha256"] = shipped["weights_sha256"]
            if rebuild:  # otherwise the folder is the shipped one
                report["reproduces_shipped"] = report["weights_sha256"] == shipped["weights_sha256"]
        items = build_data(data_cfg, cfg.seed).test_set()
        model, processor = load_model(path).eval(), load_processor(path)
        for variant in ("plain", "hint", "blank"):
            report[f"pass@1_{variant}"] = evaluate_items(model, processor, items, variant=variant)["accuracy"]
        if name is not None:
            note = ", ".join(f"pass@1 {v} {report[f'pass@1_{v}']:.3f}" for v in ("plain", "hint", "blank"))
            ship(path, recipe, name, note=f"greedy {note} on {len(items)} test items")
            report["shipped_as"] = str(BASES_DIR / name)
        print(json.dumps(report, indent=1))

    run_main(body)


if __name__ == "__main__":
    main()
