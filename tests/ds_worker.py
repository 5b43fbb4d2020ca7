"""Entry point for multi-rank tests under the `deepspeed` launcher: test-only stand-ins, then a training run.

`--stop-early` ends each response with the end-of-turn token after 2-12 tokens chosen by its sampling seed. A
random-init model almost never stops by itself, so without it every response runs to the token limit: ranks
would never finish generating at different steps (which ZeRO-3 must survive) and would all train on the same
number of tokens (which leaves the rank balancing nothing to do). The seeds do not depend on ranks, so
one-rank and two-rank runs stop identically."""

import sys

import torch

from rlsd_harness import verifier
from rlsd_harness.cli.train import main
from rlsd_harness.rollout import hf as rollout


class Parity:
    """Rewards a response by the parity of its text length: mixed rewards even for an untrained model."""

    name = "parity"

    def __call__(self, response, gold):
        return verifier.Verdict(float(len(response) % 2 == 0), None)


def stop_early() -> None:
    sampler, engine = rollout._SeededSampler, rollout.HFRolloutEngine
    sampler_init, sampler_call, engine_init = sampler.__init__, sampler.__call__, engine.__init__

    def init(self, params, seeds, banned):
        sampler_init(self, params, seeds, banned)
        self.stops = torch.tensor([2 + s % 11 for s in seeds])

    def call(self, input_ids, scores):
        done = self.stops <= len(self.logps)
        if done.any():  # all probability on the end-of-turn token
            scores = scores.clone()
            scores[done] = float("-inf")
            scores[done, sampler.eos_id] = 0.0
        return sampler_call(self, input_ids, scores)

    def remember_eos(self, *args, **kwargs):
        engine_init(self, *args, **kwargs)
        sampler.eos_id = self.eos_id

    sampler.__init__, sampler.__call__, engine.__init__ = init, call, remember_eos


if __name__ == "__main__":
    verifier.VERIFIERS["parity"] = Parity
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if "--stop-early" in args:
        args.remove("--stop-early")
        stop_early()
    main(args)
