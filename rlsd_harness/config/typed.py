"""The composed training config as typed objects: one frozen dataclass per section, each field with its type
and meaning. GENERATED from the declarations in rlsd_harness/config/schema.py (KEYS) by `make config-docs`;
do not edit (tests/test_bad_input.py checks that it is current).

`rlsd_harness.training.preflight.read_config` validates a composed config and returns a RunConfig; every
consumer after that check reads these fields. A field that may be None without its key allowing null is a key
some group file leaves out (data.path: only data=local has it). Mappings whose contents are checked elsewhere
stay dicts: algorithm.params (the objective's Config dataclass), algorithm.teacher (TeacherConfig), the
benchmarks' score and metric options (their modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, kw_only=True)
class TrainBudgetSection:
    """train.budget: its keys, each typed and with its meaning."""

    kind: Literal['flops', 'tokens', 'steps', 'seconds'] | None
    """stop once this much is spent (null: train.steps decides)"""
    value: float | None
    """the budget in the kind's unit (FLOPs, tokens, steps, seconds)"""
    stop_at: float | None
    """stop at this fraction of train.budget.value (a tuning rung; a resume with a larger one continues; null:
    the whole budget)"""


@dataclass(frozen=True, kw_only=True)
class TrainDynamicSamplingSection:
    """train.dynamic_sampling: its keys, each typed and with its meaning."""

    enabled: bool
    """DAPO's dynamic sampling: drop groups whose rewards are all equal and refill the batch with more
    rollouts (every rollout, kept or dropped, is charged to the ledger)"""
    max_rounds: int
    """refill rounds per step at most, each sampling as many prompts as the batch still lacks"""
    on_short: Literal['fill', 'error']
    """when max_rounds leaves the batch short: fill (complete it with dropped groups) or error (stop, as verl
    does)"""


@dataclass(frozen=True, kw_only=True)
class EvalSamplingSection:
    """eval.sampling: its keys, each typed and with its meaning."""

    temperature: float
    """eval.decoding=sample: temperature"""
    top_p: float
    """eval.decoding=sample: nucleus mass"""
    top_k: int
    """eval.decoding=sample: top-k (0 = off)"""


@dataclass(frozen=True, kw_only=True)
class EvalSourcesSection:
    """eval.sources: its keys, each typed and with its meaning."""

    mmmu: str | None
    """local folder or hub id of the benchmark's data"""
    mathvista: str | None
    """local folder or hub id of the benchmark's data"""
    mathvision: str | None
    """local folder or hub id of the benchmark's data"""
    zerobench: str | None
    """local folder or hub id of the benchmark's data"""
    wemath: str | None
    """local folder or hub id of the benchmark's data"""


@dataclass(frozen=True, kw_only=True)
class EvalSplitsSection:
    """eval.splits: its keys, each typed and with its meaning."""

    mmmu: str
    """the benchmark's split"""
    mathvista: str
    """the benchmark's split"""
    mathvision: str
    """the benchmark's split"""
    zerobench: str
    """the benchmark's split"""
    wemath: str
    """the benchmark's split"""


@dataclass(frozen=True, kw_only=True)
class EvalRevisionsSection:
    """eval.revisions: its keys, each typed and with its meaning."""

    mmmu: str | None
    """hub revision (local folders record their own)"""
    mathvista: str | None
    """hub revision (local folders record their own)"""
    mathvision: str | None
    """hub revision (local folders record their own)"""
    zerobench: str | None
    """hub revision (local folders record their own)"""
    wemath: str | None
    """hub revision (local folders record their own)"""


@dataclass(frozen=True, kw_only=True)
class EvalVariantsSection:
    """eval.variants: its keys, each typed and with its meaning."""

    mmmu: str
    """prompt variant"""
    mathvista: str
    """prompt variant"""
    mathvision: str
    """prompt variant"""
    zerobench: str
    """prompt variant"""
    wemath: str
    """prompt variant"""
    embedded: str
    """prompt variant"""


@dataclass(frozen=True, kw_only=True)
class EvalScoreOptionsSection:
    """eval.score_options: its keys, each typed and with its meaning."""

    mmmu: dict[str, Any]
    """keyword arguments of the module's score()"""
    mathvista: dict[str, Any]
    """keyword arguments of the module's score()"""
    mathvision: dict[str, Any]
    """keyword arguments of the module's score()"""
    zerobench: dict[str, Any]
    """keyword arguments of the module's score()"""
    wemath: dict[str, Any]
    """keyword arguments of the module's score()"""


@dataclass(frozen=True, kw_only=True)
class EvalMetricOptionsSection:
    """eval.metric_options: its keys, each typed and with its meaning."""

    mmmu: dict[str, Any]
    """keyword arguments of the module's metrics()"""
    mathvista: dict[str, Any]
    """keyword arguments of the module's metrics()"""
    mathvision: dict[str, Any]
    """keyword arguments of the module's metrics()"""
    zerobench: dict[str, Any]
    """keyword arguments of the module's metrics()"""
    wemath: dict[str, Any]
    """keyword arguments of the module's metrics()"""


@dataclass(frozen=True, kw_only=True)
class ModelWarmupSection:
    """model.warmup: its keys, each typed and with its meaning."""

    steps: int
    """warm-up steps"""
    batch_size: int
    """warm-up batch size"""
    lr: float
    """warm-up learning rate"""
    hint_share: float
    """share of privileged-prompt examples in the warm-up mix"""


@dataclass(frozen=True, kw_only=True)
class ModelLoraSection:
    """model.lora: its keys, each typed and with its meaning."""

    enabled: bool
    """train LoRA adapters only; every other weight stays frozen"""
    rank: int
    """adapter rank r"""
    alpha: float
    """scaling numerator: the update is (alpha / rank) * B A"""
    dropout: float
    """dropout on the adapters' input"""
    target_modules: list[str]
    """module names that get adapters (peft's suffix match)"""
    vision: bool
    """adapters in the vision tower too (else language model only)"""
    teacher: Literal['adapters', 'base']
    """teacher weights: adapters (its own adapters on algorithm.teacher.weights' schedule) or base (the frozen
    base, adapters off); never a copy of the base"""


@dataclass(frozen=True, kw_only=True)
class RunSection:
    """run: its keys, each typed and with its meaning."""

    name: str | None
    """run folder name under run.dir (default <algorithm>-s<seed>); no path separators"""
    dir: str
    """folder holding the run folders (relative: to the source checkout)"""
    overwrite: bool
    """replace an existing run folder of the same name"""
    resume: bool
    """continue the run in run.dir/run.name from its latest good checkpoint"""
    resume_changed: bool
    """resume even when keys outside training/run.py's RESUMABLE_KEYS changed"""
    trackers: list[str]
    """experiment trackers besides metrics.jsonl"""


@dataclass(frozen=True, kw_only=True)
class TrainSection:
    """train: its keys, each typed and with its meaning."""

    steps: int
    """rollout batches to train"""
    prompts_per_step: int
    """prompts per rollout batch (all ranks together)"""
    group_size: int
    """responses per prompt; >= 2 for objectives that compare a group's responses"""
    micro_batch_size: int
    """rows per micro-batch per rank"""
    token_budget: int | None
    """pack update micro-batches to at most this many padded tokens"""
    forward_token_budget: int | None
    """the same for forward-only passes"""
    gradient_checkpointing: bool
    """recompute activations in the backward pass"""
    share_prompts: bool
    """forward-only passes run a prompt shared by G rows once"""
    logits_chunk: int | None
    """response positions per chunk of the output head (null: by device and vocabulary; 0: the whole (B, T, V)
    log-softmax at once)"""
    balance_ranks: bool
    """move rows between ranks to even out their tokens"""
    mini_batches: int
    """optimizer steps per rollout batch; must divide the rows per rank"""
    ppo_epochs: int
    """passes over each rollout batch"""
    save_every: int
    """checkpoint every N steps and at the end (0 = never)"""
    keep_last: int | None
    """checkpoints kept: the newest N (older ones are deleted once a newer one verifies; null = keep all)"""
    keep_budget_points: bool
    """also keep every budget point's checkpoint (saved there even off the save_every grid)"""
    save_budget_policies: bool
    """write the policy at step 0 and at each budget point as a Hugging Face folder
    <run>/budget_policies/<fraction:.2f>/ with budget.json"""
    eval_every: int
    """held-out evaluation every N steps and at the end (0 = never)"""
    progress: bool
    """show a progress bar"""
    budget: TrainBudgetSection
    """the train.budget section"""
    dynamic_sampling: TrainDynamicSamplingSection
    """the train.dynamic_sampling section"""
    eval_benchmarks: list[str]
    """benchmarks also evaluated during training, each with its own scorer"""


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    """optim: its keys, each typed and with its meaning."""

    lr: float
    """AdamW learning rate (algorithm.lr overrides it when set)"""
    betas: list[float]
    """AdamW betas"""
    eps: float
    """AdamW epsilon"""
    weight_decay: float
    """AdamW weight decay"""
    grad_clip: float
    """gradient-norm clip (0 = off)"""
    warmup_steps: int
    """linear learning-rate warm-up, in optimizer steps (0 = none)"""


@dataclass(frozen=True, kw_only=True)
class EvalSection:
    """eval: its keys, each typed and with its meaning."""

    split: Literal['validation', 'test'] | None
    """split of the routine evaluations (validation chooses hyperparameters, test reports)"""
    n: int
    """held-out items for training-time evaluation (at least one per rank)"""
    decoding: str
    """greedy; paper (T 0.7, top-p 0.8, top-k 20); or sample (eval.sampling)"""
    k: int | None
    """samples per item for mean@k (null: 1 for greedy, 4 otherwise)"""
    greedy: bool
    """also one greedy response per item (greedy pass@1)"""
    sampling: EvalSamplingSection
    """the eval.sampling section"""
    budget_points: list[float]
    """large evaluations at these fractions of the budget (and at steps 0 and last)"""
    budget_n: int
    """items of the budget-point evaluations"""
    budget_split: Literal['validation', 'test']
    """split of the budget-point evaluations"""
    cache_base: bool
    """single-process runs reuse a cached step-0 evaluation of the same weights, items and decoding"""
    max_new_tokens: int
    """generation budget of training-time evaluation"""
    benchmark_max_new_tokens: int
    """generation budget of the benchmark runner"""
    batch: int
    """prompts per generate call of the benchmark runner"""
    progress: bool
    """show the benchmark runner's progress"""
    sources: EvalSourcesSection
    """the eval.sources section"""
    splits: EvalSplitsSection
    """the eval.splits section"""
    revisions: EvalRevisionsSection
    """the eval.revisions section"""
    variants: EvalVariantsSection
    """the eval.variants section"""
    score_options: EvalScoreOptionsSection
    """the eval.score_options section"""
    metric_options: EvalMetricOptionsSection
    """the eval.metric_options section"""
    mathvista_judge: Literal['self'] | None
    """null: rule-based answer extraction; self: the evaluated model extracts"""


@dataclass(frozen=True, kw_only=True)
class DynamicsSection:
    """dynamics: its keys, each typed and with its meaning."""

    teacher_probe: bool
    """objectives without a teacher: a frozen teacher measures the KL (off budget)"""


@dataclass(frozen=True, kw_only=True)
class AlgorithmSection:
    """algorithm: its keys, each typed and with its meaning."""

    name: str
    """the objective"""
    params: dict[str, Any]
    """the objective's parameters (its Config dataclass; see below)"""
    teacher: dict[str, Any]
    """the teacher (TeacherConfig; see below)"""
    lr: float | None
    """this objective's learning rate (null: optim.lr)"""
    search_space: dict[str, Any]
    """the tuner's ranges for this objective (analysis/tuning/search.py: key -> {low, high, log, int} or
    {choices}); training ignores it"""


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """model: its keys, each typed and with its meaning."""

    arch: str
    """model architecture"""
    size: str | None
    """a project-built size (null: load model.path)"""
    seed: int
    """initialisation seed of a project-built model"""
    vocab_size: int | None
    """tokenizer size of a project-built model"""
    head_vocab: int | None
    """embedding and output-head rows of a project-built model (null: the tokenizer's); ids past the tokenizer
    are never sampled"""
    path: str | None
    """a local Hugging Face model folder instead of a built model"""
    warmup: ModelWarmupSection | None
    """supervised warm-up of a project-built model (null: none)"""
    lora: ModelLoraSection
    """LoRA adapters (peft) instead of full-parameter training (training/lora.py)"""


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """data: its keys, each typed and with its meaning."""

    name: Literal['embedded', 'local']
    """embedded (generated) or local (files)"""
    level: int | None = None
    """embedded task difficulty"""
    test_size: int | None = None
    """embedded held-out set size"""
    privileged: Literal['text', 'image_hint'] | None = None
    """embedded: the teacher's privileged context, text (the reference in words) or image_hint (an extra image
    showing the answer, which the student does not see)"""
    verifier: str
    """reward verifier"""
    path: str | None = None
    """training rows: a .jsonl/.json/.parquet/.arrow file, a folder of them, a save_to_disk folder, or a hub
    id in the local cache"""
    test_path: str | None = None
    """held-out rows, the same kinds; needed when train.eval_every > 0"""
    split: str | None = None
    """split of a folder or hub id (data.path)"""
    test_split: str | None = None
    """the same for data.test_path"""
    config: str | None = None
    """a hub dataset's config (its subfolder)"""
    revision: str | None = None
    """a hub dataset's cached revision"""
    cache_dir: str | None = None
    """where `datasets` keeps converted json/parquet"""
    image_root: str | None = None
    """where relative image paths start (default: the data file's folder)"""
    schema: str | None = None
    """which columns hold each field"""
    fields: dict[str, Any] | None = None
    """per-field column overrides (id, question, images, answer, solution, options, teacher_images: images
    only the teacher sees)"""
    require_image: bool | None = None
    """refuse rows without an image"""


@dataclass(frozen=True, kw_only=True)
class RolloutSection:
    """rollout: its keys, each typed and with its meaning."""

    engine: Literal['hf', 'vllm']
    """rollout engine"""
    temperature: float
    """sampling temperature"""
    top_p: float
    """nucleus sampling mass"""
    top_k: int
    """top-k sampling (0 = off)"""
    max_new_tokens: int
    """response length limit"""
    gpu_memory_utilization: float | None = None
    """vLLM: share of GPU memory"""
    max_model_len: int | None = None
    """vLLM: prompt + response length limit"""
    sleep_level: int | None = None
    """vLLM: sleep level between rollouts"""
    sync_bucket_mb: float | None = None
    """vLLM: MiB of trainer weights per load_weights call in the weight sync (a larger tensor goes alone;
    under ZeRO-3 one bucket is gathered at a time)"""


@dataclass(frozen=True, kw_only=True)
class DeepspeedSection:
    """deepspeed: its keys, each typed and with its meaning."""

    zero_stage: int
    """ZeRO stage"""
    bf16: bool
    """train in bf16"""
    offload_optimizer: bool
    """optimizer state on the CPU"""
    param_persistence_threshold: int | None = None
    """ZeRO-3: parameters this small stay gathered (null: 1e5)"""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The whole config: its keys, each typed and with its meaning."""

    seed: int
    """seed of the prompt stream, sampling and initialisation"""
    run: RunSection
    """the run section"""
    train: TrainSection
    """the train section"""
    optim: OptimSection
    """the optim section"""
    eval: EvalSection
    """the eval section"""
    dynamics: DynamicsSection
    """the dynamics section"""
    algorithm: AlgorithmSection
    """the algorithm section"""
    model: ModelSection
    """the model section"""
    data: DataSection
    """the data section"""
    rollout: RolloutSection
    """the rollout section"""
    deepspeed: DeepspeedSection
    """the deepspeed section"""
    composed: Any = field(default=None, repr=False, compare=False)
    """the composed DictConfig it was read from: written as config.yaml, and where each value came from (the
    command line, an experiment, a yaml file)"""
