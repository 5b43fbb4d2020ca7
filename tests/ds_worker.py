"""Entry point for multi-rank tests under the `deepspeed` launcher: the test-only verifier, then a training run."""

import sys

from harness import verifier
from harness.train import main


class Parity:
    name = "parity"

    def __call__(self, response, gold):
        return verifier.Verdict(float(len(response) % 2 == 0), None)


if __name__ == "__main__":
    verifier.VERIFIERS["parity"] = Parity
    main([a for a in sys.argv[1:] if not a.startswith("--local_rank")])
