"""`rlsd-train algorithm=rlsd train.steps=50 ...`: one training run in its own folder under results/runs/
(`experiment=NAME algorithm=M` takes the settings of method M of a comparison, e.g. the paper's; under
`deepspeed ... --module rlsd_harness.cli.train` each rank runs this; the `--local_rank=N` the launcher
appends is accepted)."""

from __future__ import annotations

from rlsd_harness.cli import run_main, split_args


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness import dist
    from rlsd_harness.config import compose_config, expand_experiment
    from rlsd_harness.training.run import Interrupted, default_resume_command, run

    def body() -> None:
        _, overrides = split_args(argv, "rlsd-train", __doc__, {}, passes=("experiment",))
        try:
            run(compose_config(expand_experiment(overrides)), resume_command=default_resume_command(argv))
        except Interrupted as e:  # the checkpoint and the command that resumes were printed
            raise SystemExit(e.exit_code) from None
        finally:
            dist.shutdown()

    run_main(body)


if __name__ == "__main__":
    main()
