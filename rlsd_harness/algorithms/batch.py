"""The typed batch through which an objective reads everything it needs.

One row per sampled response; rows are ordered group by group (the G responses to one prompt are
consecutive) until `Objective.prepare` has run; after it the trainer may move rows between ranks to even out
their tokens (train.balance_ranks), so `loss` must not rely on the group order. Response-level tensors are
(B, T), right-padded, aligned position by position between student and teacher: position t is the t-th
response token in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

TEACHER_SIGNALS = ("none", "sampled", "topk", "full")


@dataclass
class PromptInputs:
    """Left-padded prompt token ids (B, P) and their attention mask, for one model role. Rows with the same
    `key` hold the same prompt and images (the G responses of a group), which lets a forward run that prompt
    once; None when unknown."""

    ids: torch.Tensor
    mask: torch.Tensor
    key: torch.Tensor | None = None  # (B,) long

    def rows(self, idx: torch.Tensor) -> PromptInputs:
        return PromptInputs(self.ids[idx], self.mask[idx], None if self.key is None else self.key[idx])


@dataclass
class VisionInputs:
    """Images of the batch in the Qwen-VL layout: patches of all images stacked, one grid row per image."""

    pixel_values: torch.Tensor  # (num_patches, patch_dim)
    image_grid_thw: torch.Tensor  # (num_images, 3)
    images_per_row: torch.Tensor  # (B,) how many images each row's prompt holds

    def select(self, rows: torch.Tensor) -> VisionInputs:
        patches_per_image = self.image_grid_thw.prod(-1)
        image_start = torch.cumsum(self.images_per_row, 0) - self.images_per_row
        patch_start = torch.cumsum(patches_per_image, 0) - patches_per_image
        image_idx, patch_idx = [], []
        for r in rows.tolist():
            for i in range(int(image_start[r]), int(image_start[r] + self.images_per_row[r])):
                image_idx.append(i)
                patch_idx.append(torch.arange(int(patch_start[i]), int(patch_start[i] + patches_per_image[i])))
        image_idx_t = torch.tensor(image_idx, dtype=torch.long)
        return VisionInputs(
            pixel_values=self.pixel_values[torch.cat(patch_idx)] if patch_idx else self.pixel_values[:0],
            image_grid_thw=self.image_grid_thw[image_idx_t],
            images_per_row=self.images_per_row[rows],
        )


@dataclass
class PolicyOutput:
    """What the trainer's forward of the current policy gives an objective for one micro-batch."""

    logp: torch.Tensor  # (B, T) log-prob of each sampled token, with gradient
    entropy: torch.Tensor  # (B, T) detached
    logprobs: torch.Tensor | None = None  # (B, T, V) full log-softmax, with gradient (tests, small models)
    # What the trainer gives instead of `logprobs`, computed chunk by chunk without a (B, T, V) tensor:
    topk_logp: torch.Tensor | None = None  # (B, T, k) with gradient, on the batch's topk_idx (teacher_signal topk)
    vocab_loss: torch.Tensor | None = None  # (B, T) the objective's `vocab_loss`, with gradient (signal full)


@dataclass
class RolloutBatch:
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) float 0/1
    rewards: torch.Tensor  # (B,)
    group_size: int
    rollout_logp: torch.Tensor  # (B, T) log-probs under the sampling distribution (rollout engine)
    student: PromptInputs
    step: int = 0
    vision: VisionInputs | None = None
    # Filled on the whole batch before the update (objective.prepare / trainer):
    advantages: torch.Tensor | None = None  # (B,) or (B, T)
    old_logp: torch.Tensor | None = None  # (B, T); None while the policy is the one that sampled
    ref_logp: torch.Tensor | None = None  # (B, T) reference model, when a KL term asks for it
    # Teacher: privileged prompt per row, and which rows have one (SDPO rows without a successful sibling do not).
    teacher: PromptInputs | None = None
    teacher_mask: torch.Tensor | None = None  # (B,) float 0/1
    # The teacher's images when its prompt holds images the student's does not (visual privileged context: the
    # student's images, then the teacher's own, per row); None: the teacher reads `vision`, as the student does.
    teacher_vision: VisionInputs | None = None
    # Teacher signals, filled per micro-batch by the backbone, only those the objective declared:
    teacher_logp: torch.Tensor | None = None  # (B, T) sampled-token log-probs
    teacher_topk_logp: torch.Tensor | None = None  # (B, T, k) on the student's top-k support
    topk_idx: torch.Tensor | None = None  # (B, T, k) vocabulary ids of that support
    teacher_logprobs: torch.Tensor | None = None  # (B, T, V) full vocabulary
    # Whole-mini-batch counts for aggregate_loss, set by the trainer so micro-batch splits change nothing.
    num_tokens: float | None = None
    num_seqs: float | None = None
    max_len: int | None = None
    # Anything else per row (texts, parsed answers); never read by the trainer.
    extras: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def loss_mask(self) -> torch.Tensor:
        """Tokens that carry a loss: the response, minus rows whose teacher context is missing."""
        if self.teacher_mask is None:
            return self.response_mask
        return self.response_mask * self.teacher_mask[:, None].to(self.response_mask.dtype)

    def set_loss_counts(self, max_len: int | None = None) -> None:
        """Record this (whole mini-)batch's token and sequence counts, which its micro-batches then share.
        Across ranks the trainer sums these counts before setting them."""
        mask = self.loss_mask
        self.num_tokens = float(mask.sum().clamp(min=1))
        self.num_seqs = float((mask.sum(-1) > 0).sum().clamp(min=1))
        self.max_len = max_len if max_len is not None else mask.shape[-1]

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The sub-batch of the given row indices (a micro-batch, a rank's shard)."""
        n = self.batch_size
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                v = v[rows]
            elif isinstance(v, PromptInputs):
                v = v.rows(rows)
            elif isinstance(v, VisionInputs):
                v = v.select(rows)
            elif f.name == "extras":
                v = {k: [x[i] for i in rows.tolist()] if isinstance(x, list) and len(x) == n else x for k, x in v.items()}
            out[f.name] = v
        return replace(self, **out)

    @staticmethod
    def concat(batches: list[RolloutBatch]) -> RolloutBatch:
        """The rows of `batches` one after the other (shards that change rank): response-level tensors are
        right-padded and prompts left-padded with zeros to the widest, under masks that keep them inert."""
        first = batches[0]
        out = {}
        for f in fields(first):
            values = [getattr(b, f.name) for b in batches]
            v = values[0]
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                width = max(x.shape[1] for x in values) if v.dim() > 1 else None
                v = torch.cat([x if width is None else _pad(x, width, left=False) for x in values])
            elif isinstance(v, PromptInputs):
                width = max(x.ids.shape[1] for x in values)
                v = PromptInputs(ids=torch.cat([_pad(x.ids, width, left=True) for x in values]),
                                 mask=torch.cat([_pad(x.mask, width, left=True) for x in values]),
                                 key=None if v.key is None else torch.cat([x.key for x in values]))
            elif f.name == "teacher_vision" and any(x is not None for x in values):
                # shards with no privileged image: their teacher reads the student's images (or none)
                v = _concat_vision([x if x is not None else b.vision for x, b in zip(values, batches)], batches)
            elif isinstance(v, VisionInputs):
                v = _concat_vision(values, batches)
            elif f.name == "extras":
                v = {}
                for k, x in first.extras.items():
                    per_row = all(isinstance(b.extras.get(k), list) and len(b.extras[k]) == b.batch_size for b in batches)
                    v[k] = [y for b in batches for y in b.extras[k]] if per_row else x
            out[f.name] = v
        return replace(first, **out)

    def trim(self) -> RolloutBatch:
        """Drop padding columns no row uses (leading prompt columns, trailing response columns), so that a
        micro-batch of short rows costs only its own length. Masked positions never change a result."""
        keep_t = int(self.response_mask.sum(0).nonzero().max()) + 1 if self.response_mask.any() else 1
        n, width = self.batch_size, self.response_ids.shape[1]
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == n and v.shape[1] == width:
                v = v[:, :keep_t]
            elif isinstance(v, PromptInputs):
                first = int(v.mask.sum(0).nonzero().min()) if v.mask.any() else 0
                v = PromptInputs(ids=v.ids[:, first:], mask=v.mask[:, first:], key=v.key)
            out[f.name] = v
        return replace(self, **out)

    def to(self, device: torch.device | str) -> RolloutBatch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device)
            elif isinstance(v, PromptInputs):
                v = PromptInputs(ids=v.ids.to(device), mask=v.mask.to(device), key=None if v.key is None else v.key.to(device))
            elif isinstance(v, VisionInputs):
                v = VisionInputs(v.pixel_values.to(device), v.image_grid_thw.to(device), v.images_per_row.to(device))
            out[f.name] = v
        return replace(self, **out)


def _concat_vision(values: list[VisionInputs | None], batches: list[RolloutBatch]) -> VisionInputs:
    """The images of shards one after the other; a shard without images (None) adds rows that hold none."""
    ref = next(x for x in values if x is not None)
    values = [x if x is not None else VisionInputs(ref.pixel_values[:0], ref.image_grid_thw[:0],
                                                   torch.zeros(b.batch_size, dtype=torch.long))
              for x, b in zip(values, batches)]
    return VisionInputs(*(torch.cat([getattr(x, k) for x in values])
                          for k in ("pixel_values", "image_grid_thw", "images_per_row")))


def _pad(x: torch.Tensor, width: int, left: bool) -> torch.Tensor:
    """Zero-pad dimension 1 of `x` to `width` columns."""
    pad = x.new_zeros((x.shape[0], width - x.shape[1], *x.shape[2:]))
    return torch.cat([pad, x] if left else [x, pad], 1)
