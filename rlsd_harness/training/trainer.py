"""The RL trainer: rollout -> verify -> (teacher context) -> objective -> DeepSpeed step -> ledger.

One `Trainer.step()` is one rollout batch. Prompts of a step are a pure function of (seed, step) and each
rank takes its share; losses are normalised by whole-mini-batch counts summed over ranks, and gradients are
summed (not averaged) across micro-batches and ranks, so splitting a batch changes nothing but float order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from rlsd_harness import dist
from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PolicyOutput, PromptInputs, RolloutBatch, VisionInputs
from rlsd_harness.algorithms.common import masked_mean
from rlsd_harness.config import BUDGET_KEYS
from rlsd_harness.config.schema import require_typed
from rlsd_harness.config.typed import RunConfig
from rlsd_harness.rollout.hf import (
    HFRolloutEngine,
    Rollout,
    SamplingParams,
    encode_prompts,
    sample_seed,
    vision_token_ids,
)
from rlsd_harness.training import lora
from rlsd_harness.training.dynamic_sampling import fill_batch
from rlsd_harness.training.dynamics import leakage_flags
from rlsd_harness.training.ledger import Ledger, ModelShape
from rlsd_harness.training.metrics import namespaced
from rlsd_harness.training.microbatch import balance_rows, pad_to_count, partition_by_tokens
from rlsd_harness.training.teacher import (
    TeacherConfig,
    context_images,
    reference_contexts,
    sibling_contexts,
    teacher_config,
)
from rlsd_harness.training.vocab import (
    HeadConfig,
    HeadOutput,
    head_signals,
    keep_large_frees_off_the_heap,
    log_softmax_head,
    swapped_forward,
)
from rlsd_harness.verifier import build_verifier


class NonFiniteLoss(RuntimeError):
    pass


def distinct_prompts(prompt: PromptInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first row of each distinct prompt, (B,) row -> distinct index), or None when rows carry no keys.
    Rows that share nothing still go this way: under ZeRO-3 every rank must run the same sequence of forwards."""
    if prompt.key is None:
        return None
    keys, inverse = torch.unique(prompt.key, return_inverse=True)
    rows = torch.arange(len(inverse), device=inverse.device)
    first = torch.full((len(keys),), len(inverse), device=inverse.device).scatter_reduce(0, inverse, rows, "amin")
    return first, inverse


def response_hidden(
    model: torch.nn.Module,
    prompt: PromptInputs,
    vision: VisionInputs | None,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    image_token_id: int,
    share_prompts: bool = False,
) -> torch.Tensor:
    """Last hidden states (B, T, H) at the positions that predict each response token: the output head's input.
    The model runs with its head swapped for the identity, so no (B, T, V) logits are made here.

    With `share_prompts`, rows with the same `prompt.key` run their prompt, images included, once: its KV cache
    is copied to each of its rows and the responses run on top of it, at the positions the full sequence gives
    them (with gradient, the prompt's is the sum over its rows). The same hidden states and gradients up to
    float order, for a fraction of the cost when G responses share a long prompt."""
    ids = torch.cat([prompt.ids, response_ids], 1)
    attn = torch.cat([prompt.mask, response_mask.to(prompt.mask.dtype)], 1)
    mm_types = (ids == image_token_id).int()
    T = response_ids.shape[1]
    shared = distinct_prompts(prompt) if share_prompts else None
    head = getattr(model, "module", model).get_output_embeddings()
    with swapped_forward(head, lambda x: x):
        if shared is None:
            inputs = dict(input_ids=ids, attention_mask=attn, mm_token_type_ids=mm_types, use_cache=False)
            if vision is not None:
                inputs.update(pixel_values=vision.pixel_values, image_grid_thw=vision.image_grid_thw)
            return model(**inputs, logits_to_keep=T + 1).logits[:, :-1]
        first, inverse = shared
        heads = prompt.rows(first)
        inputs = dict(input_ids=heads.ids, attention_mask=heads.mask, mm_token_type_ids=mm_types[first, : heads.ids.shape[1]],
                      use_cache=True)
        if vision is not None:
            heads_vision = vision.select(first)
            inputs.update(pixel_values=heads_vision.pixel_values, image_grid_thw=heads_vision.image_grid_thw)
        out = model(**inputs, logits_to_keep=1)  # the last prompt position predicts the first response token
        cache = out.cache
        cache.reorder_cache(inverse)
        if vision is None:  # text only: a full forward numbers positions over the padded width
            positions = torch.arange(ids.shape[1] - T, ids.shape[1], device=ids.device).expand(len(ids), -1)
        else:  # multimodal RoPE positions of the full sequences, as a full forward computes them: text after
            # the prompt continues from the prompt's largest position, which the prompt forward left in
            # rope_deltas (largest position + 1 - valid prompt tokens, per distinct prompt)
            deltas = getattr(model, "module", model).model.rope_deltas[inverse]
            start = prompt.mask.sum(1, keepdim=True).to(deltas.dtype) + deltas
            positions = (start + torch.arange(T, device=ids.device)).unsqueeze(0).expand(3, -1, -1)
        tail = model(input_ids=response_ids, attention_mask=attn, position_ids=positions, cache=cache, use_cache=True)
        return torch.cat([out.logits[inverse], tail.logits[:, :-1]], 1)


def forward_head(
    model: torch.nn.Module,
    prompt: PromptInputs,
    vision: VisionInputs | None,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    image_token_id: int,
    share_prompts: bool = False,
    head: HeadConfig | None = None,
    **signals: Any,
) -> HeadOutput:
    """(B, T) log-prob of each response token and entropy at the sampling temperature, plus the optional
    `signals` of `rlsd_harness.training.vocab.head_signals` (topk, gather_ids, full, vocab_loss with teacher), computed from
    the hidden states chunk by chunk (`head`, default HeadConfig(): chunked, chunk size by device)."""
    hidden = response_hidden(model, prompt, vision, response_ids, response_mask, image_token_id, share_prompts)
    base = getattr(model, "module", model)
    # the rollout never samples vision placeholders; the trained distribution excludes them the same way
    return head_signals(base.get_output_embeddings(), hidden, response_ids, vision_token_ids(base.config), temperature,
                        head or HeadConfig(), **signals)


def forward_logprobs(
    model: torch.nn.Module,
    prompt: PromptInputs,
    vision: VisionInputs | None,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    image_token_id: int,
    share_prompts: bool = False,
) -> torch.Tensor:
    """Full-vocabulary log-probs (B, T, V) of each response position, at the sampling temperature, with
    gradient: the whole-tensor path, for callers that need the distribution itself (tests, analysis). Training
    and every forward-only pass use `forward_head`, which never holds (B, T, V)."""
    hidden = response_hidden(model, prompt, vision, response_ids, response_mask, image_token_id, share_prompts)
    base = getattr(model, "module", model)
    banned = torch.tensor(vision_token_ids(base.config), device=hidden.device)
    return log_softmax_head(base.get_output_embeddings()(hidden).float(), banned, temperature)


def token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V) log-probs -> (B, T) log-prob of each given token."""
    return logprobs.gather(-1, token_ids[..., None])[..., 0]


class Trainer:
    def __init__(self, cfg: RunConfig, policy: torch.nn.Module, processor, data, log=print,
                 model_path: str | None = None) -> None:
        """`cfg`: the validated config, typed (rlsd_harness.training.preflight.read_config, which rlsd-train's
        check_run calls); its cross-key rules are not checked again here."""
        require_typed(cfg, "Trainer")
        self.cfg, self.processor, self.data, self.log = cfg, processor, data, log
        self.rank, self.world = dist.init_distributed()
        self.device = dist.device()
        tcfg = cfg.train
        self.objective = build_objective(cfg.algorithm.name, dict(cfg.algorithm.params))
        self.verifier = build_verifier(cfg.data.verifier)
        self.sampling = SamplingParams(
            n=tcfg.group_size, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens,
        )
        # The batch geometry (the rows split over ranks, mini-batches and micro-batches) is checked by the config
        # schema before a Trainer is built (preflight.check_run), for these ranks (WORLD_SIZE).
        rows = tcfg.prompts_per_step // self.world * tcfg.group_size
        if tcfg.token_budget:  # micro-batches vary in number; DeepSpeed's accumulation count is nominal
            tcfg = dataclasses.replace(tcfg, micro_batch_size=rows // tcfg.mini_batches)
        self.grad_accum = rows // (tcfg.mini_batches * tcfg.micro_batch_size)
        vocab = policy.get_output_embeddings().weight.shape[0]
        self.objective.check_vocab(vocab)
        self.head = HeadConfig.from_setting(tcfg.logits_chunk)
        if self.device.type == "cpu" and self.head.mode == "chunked":
            keep_large_frees_off_the_heap()  # else glibc keeps freed chunks resident (bench/memory.py)

        policy = lora.prepare_policy(cfg, policy)  # model.lora: adapters in, the rest frozen, before the optimizer
        policy.to(self.device)
        self.shape = ModelShape.of(policy, idle=lora.idle_parameters(policy))
        self.image_token_id = policy.config.image_token_id
        # The teacher (and a KL reference) start as copies of the initial policy, made before any update.
        # (an objective with a teacher signal has teacher weights: the schema checks it)
        tconf = teacher_config(cfg.algorithm.teacher)
        self.teacher_context = self.objective.teacher_context
        self.probe = self.objective.teacher_signal == "none" and cfg.dynamics.teacher_probe
        if self.probe:  # GRPO has no teacher; a frozen one still measures teacher-student KL, off the budget
            tconf, self.teacher_context = TeacherConfig(weights="frozen", hint=tconf.hint), "reference"
        self.teacher_cfg = tconf
        # (with LoRA: the policy's own base, adapters off or the teacher's adapter set, never a copy)
        self.teacher = lora.teacher_weights(cfg, tconf, policy) if self.teacher_context else None
        self.ref = lora.reference_weights(cfg, policy) if self.objective.needs_ref else None

        if tcfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        optim = cfg.optim
        lr = cfg.algorithm.lr or optim.lr
        optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad], lr=lr, betas=tuple(optim.betas),
            weight_decay=optim.weight_decay, eps=optim.eps,
        )
        warmup = optim.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        ds_config = dist.deepspeed_config(cfg.deepspeed, tcfg.micro_batch_size, self.grad_accum, optim.grad_clip)
        self.engine = dist.initialize_engine(policy, optimizer, scheduler, ds_config)
        self.zero_stage = cfg.deepspeed.zero_stage
        self.synced_generation = self.zero_stage == 3 and self.world > 1
        # The update's forward shares prompts too (their gradient sums over the rows), except under gradient
        # checkpointing, which turns the KV cache off in training.
        self.share_in_update = tcfg.share_prompts and not tcfg.gradient_checkpointing
        # DeepSpeed may have cast the policy (bf16); copies follow it, and are partitioned like it under ZeRO-3.
        dtype = next(self.engine.module.parameters()).dtype
        for holder in (self.teacher, self.ref):
            if holder is not None:
                holder.place(dtype, self.zero_stage, ds_config)
        if cfg.rollout.engine == "hf":
            self.rollout = HFRolloutEngine(self.engine.module, processor, synced=self.synced_generation)
        else:  # vllm (rollout.engine's choices: the schema)
            from rlsd_harness.rollout.vllm import VLLMRolloutEngine

            if model_path is None:
                raise ValueError("rollout.engine=vllm needs the policy's model folder (model_path)")
            self.rollout = VLLMRolloutEngine(
                str(model_path), processor, cfg.rollout.gpu_memory_utilization, cfg.rollout.max_model_len,
                cfg.rollout.sleep_level, cfg.seed,
                sync_bucket_mb=cfg.rollout.sync_bucket_mb,
            )
            self.rollout.sleep()
        self.dynamic_sampling = tcfg.dynamic_sampling
        if self.dynamic_sampling.enabled and not hasattr(data, "refill_prompts"):
            raise ValueError(f"train.dynamic_sampling.enabled=true needs a prompt source with refill_prompts; "
                             f"{type(data).__name__} has none (valid: data=embedded, data=local)")
        self.ledger = Ledger()
        self.step_count = 0  # optimizer steps done
        self.rollout_step = 0  # rollout batches done

    # ------------------------------------------------------------------ resumable state
    def state_dict(self) -> dict[str, Any]:
        """Everything besides tensors and RNG that a later step, metric or stopping decision reads: the step
        counters, the ledger's totals (budgets), the teacher's update count, the data position, DeepSpeed's
        step counters. (Weights, optimizer, scheduler and RNG are the checkpoint's tensors.)"""
        return {
            "step_count": self.step_count, "rollout_step": self.rollout_step,
            "ledger": self.ledger.state_dict(),
            "teacher_updates": self.teacher.updates if self.teacher is not None else 0,
            # prompts are a pure function of (seed, step): the next step's batch is all the position there is
            "data": {"next_step": self.rollout_step + 1, "rows": len(getattr(self.data, "rows", ()))},
            "engine": {k: int(getattr(self.engine, k, 0)) for k in ("global_steps", "global_samples", "micro_steps")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = len(getattr(self.data, "rows", ()))
        saved_rows = state.get("data", {}).get("rows", rows)
        if saved_rows != rows:
            raise ValueError(f"the checkpoint was trained on {saved_rows} data rows, data.path has {rows} now: "
                             f"the prompt order of the resumed steps would differ")
        self.step_count, self.rollout_step = int(state["step_count"]), int(state["rollout_step"])
        self.ledger.load_state_dict(state["ledger"])
        if self.teacher is not None:
            self.teacher.updates = int(state.get("teacher_updates", 0))
        for k, v in state.get("engine", {}).items():
            if hasattr(self.engine, k):
                setattr(self.engine, k, v)

    def cumulative(self) -> dict[str, float]:
        """The run's totals under the names a step's metrics give them (what a budget reads), without a step:
        summed over ranks as `_close_step` sums them (a collective: every rank calls it)."""
        counts = {f"cum/{k}": v for k, v in self.ledger.total.items()}
        if self.world > 1:
            keys = sorted(k for k in counts if not k.startswith("cum/time"))
            counts.update(zip(keys, dist.all_reduce_sum([counts[k] for k in keys])))
        out = namespaced({"step": float(self.step_count), **counts})
        for key in BUDGET_KEYS.values():  # before the first step nothing is spent
            out.setdefault(key, 0.0)
        return out

    # ------------------------------------------------------------------ one RL step
    def step(self) -> dict[str, float]:
        """One RL step, a phase per line: generate and verify, the objective's preparation (teacher contexts,
        advantages), rows onto ranks and device, the no-grad forwards, then per mini-batch the losses, DeepSpeed's
        backward and optimizer step, and the teacher's update; last, the rollout engine's weights."""
        self.rollout_step += 1
        prompts = self.data.prompts(self.rollout_step, self.cfg.train.prompts_per_step)[self.rank :: self.world]
        batch = self._rollout(prompts)
        batch, prompts, refill = self._dynamic_sampling(batch, prompts)  # off by default: unchanged
        metrics = {**self._prepare(batch, prompts), **refill}
        batch = self._place(batch, metrics)
        self._no_grad_forwards(batch)
        self.engine.module.train()
        sums: dict[str, tuple[float, float]] = {}
        for mini in self._mini_batches(batch):
            micro = self._micro_batches(mini, self.cfg.train.token_budget)
            for k, rows in enumerate(micro):
                # the last micro-batch closes the accumulation (their number may vary with a token budget)
                self.engine.set_gradient_accumulation_boundary(k == len(micro) - 1)
                loss = self._micro_loss(mini.select(rows), sums)
                with self.ledger.phase("update"):
                    # The loss is already normalised by whole-mini-batch counts: undo DeepSpeed's 1/GAS and its
                    # averaging over ranks, so that micro-batch and rank gradients add up to the full-batch gradient.
                    self.engine.backward(loss * self.world, scale_wrt_gas=False)
                    self.engine.step()  # DeepSpeed applies the optimizer at the accumulation boundary only
            self.step_count += 1
            self._update_teacher()
        self._sync_rollout_weights()
        return self._close_step({**metrics, **self._weighted_means(sums), "lr": self.engine.get_lr()[0],
                                 "teacher_updates": float(self.teacher.updates) if self.teacher else 0.0})

    def _rollout(self, prompts: list, round_: int = 0) -> RolloutBatch:
        """G samples per prompt from the rollout engine, each verified: rows prompt-major, G per prompt. Every
        sample is charged to the ledger here, as it is generated, so dynamic sampling's dropped ones are too;
        `round_` > 0 is a refill round of dynamic sampling, whose samples draw from seeds of their own."""
        G, led = self.cfg.train.group_size, self.ledger
        self.engine.module.eval()
        tag = f"/refill{round_}" if round_ else ""
        with led.phase("rollout"):
            seeds = [sample_seed(self.cfg.seed, self.rollout_step, f"{p.id}{tag}", j) for p in prompts for j in range(G)]
            ro = self.rollout.generate(prompts, self.sampling, seeds)
            self._book("rollout", ro, ro.prompt, prompts=len(prompts))
        with led.phase("reward"):
            verdicts = [self.verifier(text, prompts[i // G].answer) for i, text in enumerate(ro.texts)]
            rewards = torch.tensor([v.reward for v in verdicts])
        student = PromptInputs(ro.prompt.ids, ro.prompt.mask, self._student_keys(len(prompts)))
        return RolloutBatch(
            response_ids=ro.response_ids, response_mask=ro.response_mask, rewards=rewards, group_size=G,
            rollout_logp=ro.logp, student=student, vision=ro.vision, step=self.step_count + 1,
            extras={"texts": ro.texts, "parsed": [v.parsed for v in verdicts]},
        )

    def _dynamic_sampling(self, batch: RolloutBatch, prompts: list) -> tuple[RolloutBatch, list, dict[str, float]]:
        """With train.dynamic_sampling.enabled, DAPO's: groups whose rewards are all equal are dropped and the
        batch is refilled from the step's refill stream (training/dynamic_sampling.py); else the batch as it is."""
        if not self.dynamic_sampling.enabled:
            return batch, prompts, {}
        drawn = 0

        def sample(round_: int, n: int) -> tuple[RolloutBatch, list]:
            nonlocal drawn
            extra = self.data.refill_prompts(self.rollout_step, drawn, n, self.rank, self.world)
            drawn += n
            return self._rollout(extra, round_), extra

        batch, prompts, metrics = fill_batch(batch, prompts, sample, self.dynamic_sampling, self.synced_generation,
                                             dist.all_reduce_max, dist.all_reduce_sum)
        batch.student.key = self._student_keys(len(prompts))  # the groups come from several rollouts: renumber
        return batch, prompts, metrics

    def _student_keys(self, n_prompts: int) -> torch.Tensor:
        """A key per row, G rows per prompt: prompts numbered across ranks, so keys stay unique after rows move."""
        G = self.cfg.train.group_size
        return (torch.arange(n_prompts * G) // G) * self.world + self.rank

    def _prepare(self, batch: RolloutBatch, prompts: list) -> dict[str, float]:
        """The teacher's contexts (when an update of this batch reads the teacher), then the objective's own
        preparation (advantages, RLSD's schedule ...); returns its metrics and the rollout's."""
        tcfg = self.cfg.train
        updates = range(self.step_count + 1, self.step_count + 1 + tcfg.ppo_epochs * tcfg.mini_batches)
        if self.teacher_context and any(self._teacher_at(k) for k in updates):
            with self.ledger.phase("probe" if self.probe else "teacher"):
                self._attach_teacher_prompts(batch, prompts)
        metrics = self.objective.prepare(batch)
        metrics.update(self._rollout_metrics(batch, prompts))
        return metrics

    def _place(self, batch: RolloutBatch, metrics: dict[str, float]) -> RolloutBatch:
        """Rows balanced over the ranks (their metrics into `metrics`), then onto this rank's device."""
        if self.world > 1 and self.cfg.train.balance_ranks:
            batch, balance = self._balance_ranks(batch)
            metrics.update(balance)
        return batch.to(self.device)

    def _no_grad_forwards(self, batch: RolloutBatch) -> None:
        """The KL reference's log-probs, and the sampling policy's when it is not the one being updated."""
        tcfg = self.cfg.train
        if self.ref is not None:
            with self.ledger.phase("ref"):
                batch.ref_logp = self._logprobs_no_grad(self.ref.module(self.engine.module), batch, "ref")
        if tcfg.ppo_epochs > 1 or tcfg.mini_batches > 1:  # else the sampling policy is the current one
            with self.ledger.phase("logprobs"):
                batch.old_logp = self._logprobs_no_grad(self.engine.module, batch, "policy")

    def _mini_batches(self, batch: RolloutBatch):
        """Each epoch's mini-batches in order, one optimizer step each, with their whole-mini-batch loss counts
        summed over ranks (what every micro-batch's loss is normalised by)."""
        tcfg = self.cfg.train
        rows_per_mini = batch.batch_size // tcfg.mini_batches
        for _ in range(tcfg.ppo_epochs):
            for m in range(tcfg.mini_batches):
                mini = batch.select(torch.arange(m * rows_per_mini, (m + 1) * rows_per_mini))
                mini.step = self.step_count + 1  # schedules (RLSD's lambda) follow optimizer steps
                mini.set_loss_counts(max_len=self.sampling.max_new_tokens)
                mini.num_tokens, mini.num_seqs = dist.all_reduce_sum([mini.num_tokens, mini.num_seqs])
                yield mini

    def _update_teacher(self) -> None:
        if self.teacher is not None:
            with self.ledger.phase("sync"):
                self.teacher.after_step(self.step_count, self.engine.module, self.zero_stage)

    def _sync_rollout_weights(self) -> None:
        if hasattr(self.rollout, "sync_weights"):  # a separate inference engine gets the new weights
            with self.ledger.phase("sync"):
                self.rollout.sync_weights(self.engine.module, self.zero_stage)

    @staticmethod
    def _weighted_means(sums: dict[str, tuple[float, float]]) -> dict[str, float]:
        """Token-weighted means over the micro-batches of every rank: weighted sums and weights summed first."""
        names = sorted(sums)
        flat = dist.all_reduce_sum([x for k in names for x in sums[k]])
        return {k: flat[2 * i] / max(flat[2 * i + 1], 1.0) for i, k in enumerate(names)}

    def _balance_ranks(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        """Even out the tokens each rank trains on. Within each mini-batch (the same rows of the whole batch as
        without balancing) rows move between ranks so that every rank keeps as many rows but about as many
        tokens: ZeRO's collectives make every rank wait for the slowest. Losses are unchanged, since they are
        normalised by whole-mini-batch counts; only float order differs."""
        W, n = self.world, batch.batch_size
        per_mini = n // self.cfg.train.mini_batches
        lengths = dist.all_gather_object((batch.student.mask.sum(-1) + batch.response_mask.sum(-1)).long().tolist())
        dest = {}  # (source rank, row) -> destination rank
        for m in range(self.cfg.train.mini_batches):
            rows = [(src, i) for src in range(W) for i in range(m * per_mini, (m + 1) * per_mini)]
            for dst, part in enumerate(balance_rows([lengths[src][i] for src, i in rows], W)):
                dest.update({rows[j]: dst for j in part})
        before = [sum(x) for x in lengths]
        after = [sum(lengths[src][i] for (src, i), d in dest.items() if d == k) for k in range(W)]
        if max(after) > max(before):  # the greedy split is a heuristic: never leave the ranks worse off
            dest, after = {(src, i): src for src, i in dest}, before
        pieces = [batch.select(torch.tensor([i for i in range(n) if dest[self.rank, i] == dst], dtype=torch.long))
                  for dst in range(W)]
        merged = RolloutBatch.concat(dist.exchange(pieces))
        # back into mini-batch order, so that the m-th slice of every rank is still the m-th mini-batch
        arrived = [(i // per_mini, src, i) for src in range(W) for i in range(n) if dest[src, i] == self.rank]
        order = sorted(range(len(arrived)), key=arrived.__getitem__)
        return merged.select(torch.tensor(order, dtype=torch.long)), {
            "rank_imbalance_before": max(before) * W / max(sum(before), 1),
            "rank_imbalance_after": max(after) * W / max(sum(after), 1),
        }

    def _micro_batches(self, batch: RolloutBatch, token_budget: int | None) -> list[torch.Tensor]:
        """Row indices of each micro-batch: fixed-size slices, or (with a token budget) rows packed by padded
        length, the same number of micro-batches on every rank (ZeRO-3 gathers in each pass)."""
        n = batch.batch_size
        if not token_budget:
            return [torch.arange(k, min(k + self.cfg.train.micro_batch_size, n)) for k in range(0, n, self.cfg.train.micro_batch_size)]
        lengths = (batch.student.mask.sum(-1) + batch.response_mask.sum(-1)).long().tolist()
        groups = partition_by_tokens(lengths, int(token_budget))
        groups = pad_to_count(groups, dist.all_reduce_max(len(groups)))
        return [torch.tensor(sorted(g)) for g in groups]

    def _micro_loss(self, mb: RolloutBatch, sums: dict[str, tuple[float, float]]) -> torch.Tensor:
        """The objective's loss on one micro-batch (the policy's forward and the teacher's signals first), its
        metrics added to `sums` as (weighted sum, weight); the caller runs the backward."""
        if self.cfg.train.token_budget:
            mb = mb.trim()
        obj, led = self.objective, self.ledger
        role = "probe" if self.probe else "teacher"
        signals: dict[str, Any] = {}
        teacher = self.teacher_context is not None and self._teacher_at(mb.step)
        if obj.teacher_signal == "full" and teacher:  # the loss reads the teacher's whole distribution: it goes first
            with led.phase(role):
                self._teacher_signals(mb, None)
            signals = dict(vocab_loss=obj.vocab_loss, teacher=mb.teacher_logprobs)
        elif obj.teacher_signal == "topk":
            signals = dict(topk=obj.topk)
        with led.phase("update"):
            out = forward_head(
                self.engine, mb.student, mb.vision, mb.response_ids, mb.response_mask, self.sampling.temperature,
                self.image_token_id, share_prompts=self.share_in_update, head=self.head, **signals,
            )
            policy = PolicyOutput(logp=out.logp, entropy=out.entropy, topk_logp=out.topk_logp, vocab_loss=out.vocab_loss)
        if teacher and obj.teacher_signal != "full":
            with led.phase(role):
                self._teacher_signals(mb, out.topk_ids)
        with led.phase("update"):
            loss, m = obj.loss(mb, policy)
            # every rank stops together: a rank that went on into the backward would wait for the others forever
            if dist.all_reduce_max(int(not torch.isfinite(loss))):
                raise NonFiniteLoss(f"non-finite loss at step {self.step_count + 1} (this rank's: {loss.item()}) "
                                    f"(algorithm {self.cfg.algorithm.name}); metrics: "
                                    f"{ {k: float(v) for k, v in m.items()} }")
        mask = mb.response_mask
        w = float(mask.sum())
        self._book("policy", mb, mb.student, self.share_in_update, backward=True)
        m["loss"] = loss.detach() * (mb.num_tokens or 1.0) / max(w, 1.0)  # token-weighted back to the batch loss
        m["entropy"] = masked_mean(policy.entropy, mask)
        # Rollout engine vs trainer on the same tokens (numerics, kernels, vLLM's bf16): the mismatch TIS corrects.
        m["rollout_logp_gap"] = masked_mean((policy.logp.detach() - mb.rollout_logp).abs(), mask)
        weights = dict.fromkeys(m, w)
        if mb.teacher_logp is not None:  # over the tokens that have a teacher (SDPO: rows with a sibling)
            kl_mask = mb.loss_mask if mb.teacher_mask is not None else mask
            m["teacher_kl"] = masked_mean(policy.logp.detach() - mb.teacher_logp, kl_mask)
            weights["teacher_kl"] = float(kl_mask.sum())
        for k, v in m.items():  # (weighted sum, weight)
            total, weight = sums.get(k, (0.0, 0.0))
            sums[k] = (total + float(v) * weights[k], weight + weights[k])
        return loss

    # ------------------------------------------------------------------ teacher
    def _teacher_at(self, step: int) -> bool:
        """Whether optimizer step `step` runs the teacher: GRPO's probe always, an objective when its loss reads it."""
        return self.probe or self.objective.uses_teacher(step)

    def _attach_teacher_prompts(self, batch: RolloutBatch, prompts: list) -> None:
        G = batch.group_size
        if self.teacher_context == "reference":
            convs = reference_contexts(prompts, G, self.teacher_cfg.hint)
            mask = torch.ones(batch.batch_size)
        else:
            convs, mask = sibling_contexts(prompts, G, batch.extras["texts"], batch.rewards, self.teacher_cfg)
        # Encode each distinct (prompt, context) once and index rows into it: with a reference context the G
        # rows of a group share one conversation, and the processor (image resize/patching) and image rendering
        # then run once per prompt instead of once per row. Left-padding to the longest is the same either way.
        # (Only ids/mask are kept, and the teacher reads the student's pixel values, unless some prompt holds images
        # only the teacher sees: then the teacher's own images ride in batch.teacher_vision.)
        # Rows with the same conversation also share a key (their group's student key, times G, plus the first
        # such row within the group), so that the teacher's forward can run each distinct prompt once.
        index, uniq_convs, uniq_images, seen, keys = [], [], [], {}, []
        for r, conv in enumerate(convs):
            key = (r // G, repr(conv))
            if key not in seen:
                seen[key] = (len(uniq_convs), r % G)
                uniq_convs.append(conv)
                uniq_images.append(context_images(prompts[r // G]))
            index.append(seen[key][0])
            keys.append(int(batch.student.key[r]) * G + seen[key][1])
        enc, vision = encode_prompts(self.processor, uniq_convs, uniq_images)
        idx = torch.tensor(index, dtype=torch.long)
        if any(getattr(p, "teacher_images", None) for p in prompts):
            batch.teacher_vision = vision.select(idx)
        batch.teacher = PromptInputs(ids=enc.ids[idx], mask=enc.mask[idx], key=torch.tensor(keys))
        batch.teacher_mask = mask

    @torch.no_grad()
    def _teacher_signals(self, mb: RolloutBatch, topk_ids: torch.Tensor | None) -> None:
        """The teacher's signals on the micro-batch: sampled-token log-probs, and what the objective declared
        besides (its log-probs on the student's top-k ids `topk_ids`, or its whole distribution)."""
        obj = self.objective
        model = self.teacher.module(self.engine.module)
        was_training = model.training
        model.eval()
        share = self.cfg.train.share_prompts
        signals: dict[str, Any] = {}
        if obj.teacher_signal == "full":
            # The one (B, T, V) tensor left: the loss reads the teacher's whole distribution at every position,
            # and the teacher's head weight exists outside its own forward only when it is not partitioned.
            signals["full"] = True
        elif obj.teacher_signal == "topk":
            signals["gather_ids"] = topk_ids
        vision = mb.teacher_vision if mb.teacher_vision is not None else mb.vision
        out = forward_head(model, mb.teacher, vision, mb.response_ids, mb.response_mask, self.sampling.temperature,
                           self.image_token_id, share_prompts=share, head=self.head, **signals)
        model.train(was_training)
        mb.teacher_logp = out.logp
        if obj.teacher_signal == "full":
            mb.teacher_logprobs = out.logprobs
        elif obj.teacher_signal == "topk":
            mb.topk_idx, mb.teacher_topk_logp = topk_ids, out.gathered
        self._book("probe" if self.probe else "teacher", mb, mb.teacher, share, vision)

    @torch.no_grad()
    def _logprobs_no_grad(self, model, batch: RolloutBatch, role: str) -> torch.Tensor:
        """Sampled-token log-probs of the student prompt + response under `model` (old policy, reference)."""
        out = torch.zeros_like(batch.response_mask)
        budget = self.cfg.train.forward_token_budget
        share = self.cfg.train.share_prompts
        for rows in self._micro_batches(batch, budget):
            mb = batch.select(rows)
            mb = mb.trim() if budget else mb
            lp = forward_head(model, mb.student, mb.vision, mb.response_ids, mb.response_mask,
                              self.sampling.temperature, self.image_token_id, share_prompts=share, head=self.head).logp
            out[rows, : lp.shape[1]] = lp
            self._book(role, mb, mb.student, share)
        return out

    # ------------------------------------------------------------------ accounting
    def _book(self, role: str, rows: RolloutBatch | Rollout, prompt: PromptInputs, shared: bool = False,
              vision: VisionInputs | None = None, *, backward: bool = False, prompts: int = 0) -> None:
        """The one place tokens and FLOPs are charged to the ledger (the estimates: training/ledger.py). `rows`'
        responses after `prompt`, with `vision`'s images (default rows.vision): role "rollout" is their generation
        (`prompts`: how many prompts were sampled); any other role (ref, policy, teacher, probe) a forward over
        them, and with `backward` the update's forward and backward. Keys are added in a fixed order: the step's
        FLOPs total is a float sum in the order keys first appear, so a reordering changes its last bits."""
        if role == "rollout":  # generation runs each image through the vision tower once
            lengths = rows.response_mask.sum(-1).cpu()
            counts = {"prompts": prompts, "tokens/generated": float(lengths.sum()),
                      "flops/rollout": self.shape.generate_flops(prompt.mask.sum(-1).cpu(), lengths)
                      + self.shape.forward_flops(torch.zeros(0), self._patches(rows, vision))}
        elif not backward:
            tokens, flops, _ = self._forward_cost(rows, prompt, shared, vision)
            counts = {f"tokens/fwd_{role}": tokens, f"flops/{role}": flops}
        else:
            tokens, flops, patches = self._forward_cost(rows, prompt, shared, vision)
            counts = {f"tokens/fwd_{role}": tokens, f"tokens/bwd_{role}": tokens, f"flops/{role}_fwd": flops,
                      f"flops/{role}_bwd": self.shape.backward_flops(flops, tokens, patches)}
        self.ledger.add(**counts)

    @staticmethod
    def _patches(mb: RolloutBatch, vision: VisionInputs | None = None) -> torch.Tensor | None:
        vision = mb.vision if vision is None else vision
        return None if vision is None else vision.image_grid_thw.prod(-1)

    def _forward_cost(self, mb: RolloutBatch, prompt: PromptInputs, shared: bool,
                      vision: VisionInputs | None = None) -> tuple[float, float, torch.Tensor | None]:
        """(tokens, FLOPs, patches of the images that ran) of a forward over `prompt` + the responses, with
        `vision`'s images (default the student's). With shared prompts, each distinct prompt (and its images) once,
        then every response over its cached prompt, as in generation."""
        vision = mb.vision if vision is None else vision
        prompt_lens, response_lens = prompt.mask.sum(-1), mb.response_mask.sum(-1)
        distinct = distinct_prompts(prompt) if shared else None
        if distinct is None:
            seq, patches = prompt_lens + response_lens, self._patches(mb, vision)
            return float(seq.sum()), self.shape.forward_flops(seq, patches), patches
        first = distinct[0]
        head_patches = None if vision is None else vision.select(first).image_grid_thw.prod(-1)
        flops = self.shape.forward_flops(prompt_lens[first], head_patches) + self.shape.generate_flops(prompt_lens, response_lens)
        return float(prompt_lens[first].sum() + response_lens.sum()), flops, head_patches

    def _rollout_metrics(self, batch: RolloutBatch, prompts: list) -> dict[str, float]:
        lengths = batch.response_mask.sum(-1).cpu()  # (the ledger charged every sample in _rollout)
        groups = batch.rewards.view(-1, batch.group_size)
        leak = leakage_flags(batch.extras["texts"])
        return {
            "reward": batch.rewards.mean().item(),
            "reward_std_in_group": groups.std(-1).mean().item() if batch.group_size > 1 else 0.0,
            "mixed_groups": ((groups.max(-1).values > groups.min(-1).values).float().mean().item()),
            "response_length": lengths.float().mean().item(),
            "truncated": float((lengths >= self.sampling.max_new_tokens).float().mean()),
            "leakage": sum(leak) / max(len(leak), 1),
        }

    def _close_step(self, metrics: dict[str, float]) -> dict[str, float]:
        counts = self.ledger.close_step()
        if self.world > 1:  # ledger counts are per rank; report the whole run's
            keys = [k for k in counts if not k.startswith(("step/time", "cum/time"))]
            summed = dist.all_reduce_sum([counts[k] for k in keys])
            counts.update(zip(keys, summed))
        if self.world > 1:  # per-rank means of equal-sized shards: the run's mean is their average
            names = sorted(metrics)
            metrics = dict(zip(names, (v / self.world for v in dist.all_reduce_sum([metrics[k] for k in names]))))
        for k, v in metrics.items():
            if not math.isfinite(v):
                raise NonFiniteLoss(f"non-finite {k} ({v}) at step {self.step_count}")
        return namespaced({"step": float(self.step_count), **metrics, **counts})
