"""Entry point for multi-rank tests under the `deepspeed` launcher: test-only stand-ins, then a training run.

`--cut-responses` ends each response after 2-12 tokens chosen by its sampling seed (a random-init model almost
never stops early, so without it every rank trains on the same number of tokens and balancing has nothing to
do). The seeds do not depend on ranks, so one-rank and two-rank runs cut identically."""

import sys

import torch

from harness import verifier
from harness.rollout import HFRolloutEngine
from harness.train import main


class Parity:
    """Rewards a response by the parity of its text length: mixed rewards even for an untrained model."""

    name = "parity"

    def __call__(self, response, gold):
        return verifier.Verdict(float(len(response) % 2 == 0), None)


def cut_responses(generate):
    def wrapped(self, prompts, params, seeds):
        ro = generate(self, prompts, params, seeds)
        keep = torch.tensor([2 + s % 11 for s in seeds])
        cut = (torch.arange(ro.response_mask.shape[1])[None] < keep[:, None]).to(ro.response_mask.dtype)
        ro.response_mask, ro.logp = ro.response_mask * cut, ro.logp * cut
        ids = torch.where(cut > 0, ro.response_ids, self.pad_id)
        ro.texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return ro

    return wrapped


if __name__ == "__main__":
    verifier.VERIFIERS["parity"] = Parity
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if "--cut-responses" in args:
        args.remove("--cut-responses")
        HFRolloutEngine.generate = cut_responses(HFRolloutEngine.generate)
    main(args)
