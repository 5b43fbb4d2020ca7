"""The training core: the DeepSpeed trainer and its forwards, the teacher's weights and contexts, the compute
ledger, micro-batching, checkpoints, the run loop and the warm-up of the tiny base policy."""
