"""Tokenizer, processor and model factory.

Offline by construction: tiny Qwen-VL models are built from configs with random weights, the tokenizer is a
byte-level BPE the project trains on the embedded task's texts, and the processor is assembled from parts
(the stock Qwen-VL processors cannot be built without torchvision, which is unusable on this CPU stack).
A real checkpoint (e.g. Qwen3-VL-8B-Instruct) is any local folder, loaded with the Auto classes.

Built artifacts live in a cache folder keyed by a hash of their recipe, so the same recipe and seed give the
same files, and a changed recipe never reads a stale build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rlsd_harness.config import ConfigError

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# ChatML; an {"type": "image"} part renders as the Qwen-VL vision block (the processor expands the pad).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Tiny and small configs. "tiny" has 1,088,832 parameters (257,344 in the vision tower), small enough to learn
# the embedded task on a 2-core CPU within minutes.
ARCHS = {
    "qwen2_5_vl": {
        "tiny": dict(hidden=128, layers=4, heads=4, kv=2, ffn=384, v_depth=2, v_hidden=64, v_ffn=128),
        "small": dict(hidden=256, layers=6, heads=4, kv=2, ffn=768, v_depth=2, v_hidden=128, v_ffn=256),
    },
    "qwen3_vl": {
        "tiny": dict(hidden=128, layers=4, heads=4, kv=2, ffn=384, v_depth=2, v_hidden=64, v_ffn=128),
        "small": dict(hidden=256, layers=6, heads=4, kv=2, ffn=768, v_depth=2, v_hidden=128, v_ffn=256),
    },
}
PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16}


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


def recipe_digest(recipe: dict) -> str:
    """The name of a recipe's cache entry: a hash of the recipe alone (no machine, no file contents), so the
    same config names the same entry, and the same shipped base, on every CPU."""
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _recipe_dir(kind: str, recipe: dict) -> Path:
    return cache_root() / kind / recipe_digest(recipe)


def tiny_recipe(arch: str = "qwen2_5_vl", size: str = "tiny", seed: int = 0, vocab_size: int = 512,
                head_vocab: int | None = None) -> dict:
    """What `build_tiny` builds from; its digest names the model without building it."""
    recipe = {"arch": arch, "size": size, "seed": seed, "vocab": vocab_size, "v": 1}
    if head_vocab is not None:  # absent by default, so the default builds keep their recipe (and cache folder)
        recipe["head_vocab"] = head_vocab
    return recipe


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    """Byte-level BPE with individually split digits (as Qwen does) and the Qwen-VL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its bar is another library's display inside the command's own
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def _processor_class(arch: str):
    """The stock processor minus its video processor (whose class check needs torchvision)."""
    from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen3VLProcessor

    base = {"qwen2_5_vl": Qwen2_5_VLProcessor, "qwen3_vl": Qwen3VLProcessor}[arch]

    class ImageOnlyProcessor(base):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.video_processor = None
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            if arch == "qwen3_vl":
                self.vision_start_token = "<|vision_start|>"
                self.vision_end_token = "<|vision_end|>"
                self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
                self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)

    ImageOnlyProcessor.__name__ = f"ImageOnly{base.__name__}"
    return ImageOnlyProcessor


def build_processor(arch: str, tokenizer, image_size: int = 56):
    from transformers import Qwen2VLImageProcessorPil

    patch = PATCH[arch]
    side = image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": side * side, "longest_edge": 4 * side * side}, patch_size=patch, merge_size=2,
        temporal_patch_size=2,
    )
    return _processor_class(arch)(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(arch: str, size: str, tokenizer, head_vocab: int | None = None):
    """A Qwen2.5-VL or Qwen3-VL config for the given tokenizer (random init happens in the model class).

    `head_vocab` sizes the embedding and the output head (default: the tokenizer's size). The tokenizer's ids
    are a prefix of it; the rest are never sampled nor trained toward (`rlsd_harness.rollout.hf.vision_token_ids`
    bans them), so a tiny model can carry a real model's vocabulary, e.g. Qwen3-VL's 151,936, for measurement."""
    if arch not in ARCHS:
        raise KeyError(f"unknown model arch {arch!r}; valid: {', '.join(ARCHS)}")
    if size not in ARCHS[arch]:
        raise KeyError(f"unknown model size {size!r} for {arch}; valid: {', '.join(ARCHS[arch])}")
    d = ARCHS[arch][size]
    if head_vocab is not None and head_vocab < len(tokenizer):
        raise ValueError(f"model.head_vocab={head_vocab} is smaller than the tokenizer's {len(tokenizer)} ids; "
                         f"valid: null or an integer >= {len(tokenizer)}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = d["hidden"] // d["heads"]
    # mrope sections (temporal, height, width) must sum to head_dim / 2
    half = head_dim // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text = dict(
        vocab_size=head_vocab or len(tokenizer), hidden_size=d["hidden"], intermediate_size=d["ffn"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], num_key_value_heads=d["kv"], max_position_embeddings=2048,
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": section},
        tie_word_embeddings=True,
    )
    common = dict(
        # ids from here to the head's size stand for no token (absent unless the head is wider)
        **({"unused_token_ids_from": len(tokenizer)} if head_vocab and head_vocab > len(tokenizer) else {}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(
            depth=d["v_depth"], hidden_size=d["v_hidden"], intermediate_size=d["v_ffn"], num_heads=4, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=d["hidden"], window_size=56,
            fullatt_block_indexes=list(range(d["v_depth"])),
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    from transformers import Qwen3VLConfig

    text.update(head_dim=head_dim)
    text["rope_parameters"]["mrope_interleaved"] = True
    vision = dict(
        depth=d["v_depth"], hidden_size=d["v_hidden"], intermediate_size=d["v_ffn"], num_heads=4, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=d["hidden"], num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, **common)


def build_tiny(arch: str = "qwen2_5_vl", size: str = "tiny", seed: int = 0, vocab_size: int = 512,
               head_vocab: int | None = None) -> Path:
    """Build (or find in the cache) a randomly initialised model folder with its tokenizer and processor.
    `vocab_size` is the tokenizer's; `head_vocab` the embedding's and head's rows (see `build_config`)."""
    from transformers import AutoModelForImageTextToText

    from rlsd_harness.benchmarks import embedded

    recipe = tiny_recipe(arch, size, seed, vocab_size, head_vocab)
    out = _recipe_dir("models", recipe)
    if (out / "done").exists():
        return out
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(embedded.corpus(seed=seed), vocab_size)
    processor = build_processor(arch, tokenizer, image_size=embedded.IMAGE_SIZE if arch == "qwen2_5_vl" else 64)
    with quiet_transformers():
        model = AutoModelForImageTextToText.from_config(build_config(arch, size, tokenizer, head_vocab))
    tmp = cache_tmp(out)
    save_model(model, processor, tmp)
    (tmp / "recipe.json").write_text(json.dumps(recipe))
    publish_cache_entry(tmp, out)
    (out / "done").touch()
    return out


def cache_tmp(out: Path) -> Path:
    """This process's scratch folder for building cache entry `out`: two processes building the same entry
    (parallel study workers, two commands at once) never write into one folder."""
    return out.with_name(f"{out.name}.{os.getpid()}.tmp")


def publish_cache_entry(tmp: Path, out: Path) -> None:
    """Move a finished build into place in one rename. When another process published the same entry first
    (same recipe, same content), keep theirs and drop this build."""
    try:
        tmp.rename(out)
    except OSError:
        if not out.is_dir():
            raise
        shutil.rmtree(tmp)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Writing model shards") off while a local model
    folder is read or written: a command shows one progress display, its own. The previous setting comes back
    afterwards (transformers' switch covers huggingface_hub's bars too, so hub downloads elsewhere keep theirs).
    Loading imports DeepSpeed (through accelerate), so it is told the accelerator first (see dist)."""
    from transformers.utils import logging as hf_logging

    from rlsd_harness.dist import name_cpu_accelerator

    name_cpu_accelerator()

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def save_model(model, processor, folder: str | Path, **kwargs: Any) -> None:
    """`model.save_pretrained(folder, **kwargs)` and the processor beside it, without library progress bars."""
    with quiet_transformers():
        model.save_pretrained(folder, **kwargs)
        if processor is not None:
            processor.save_pretrained(folder)


def load_processor(path: str | Path):
    """The processor of a model folder; project-built folders need the torchvision-free processor class."""
    path = Path(path)
    recipe = path / "recipe.json"
    if recipe.exists():
        arch = json.loads(recipe.read_text())["arch"]
        return _processor_class(arch).from_pretrained(path)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


class WeightsError(ConfigError):
    """A model folder whose weights do not load completely, or hold NaN or infinite values."""


def _loading_problems(path: Path, info: dict) -> str | None:
    """What transformers' loading_info says went wrong, or None: missing keys are randomly initialised, which
    it only warns about."""
    parts = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(map(str, info.get(kind) or ()))
        if keys:
            parts.append(f"{len(keys)} {kind.replace('_', ' ')} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    parts += [str(m) for m in info.get("error_msgs") or ()][:2]
    return f"the weights do not match the model: {'; '.join(parts)}" if parts else None


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))


def check_weights(path: str | Path, key: str = "model.path") -> None:
    """Refuse a model folder whose weights would not load completely (no weight file, missing, unexpected or
    mis-shaped tensors, as transformers' loading_info reports them) or hold a NaN or infinite value. The
    key check builds the model on the meta device (no memory); the value check streams one tensor at a time.
    Raises FileNotFoundError for a folder without config.json, WeightsError otherwise."""
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{key}={path} is not a model folder (no config.json); nothing is downloaded")
    files = _weight_files(path)
    if not files:
        raise WeightsError(f"{key}={path} has no weights (no *.safetensors or pytorch_model*.bin file)")
    from safetensors import SafetensorError, safe_open

    for f in files:  # the header alone: an empty, cut-off or overwritten file fails here, naming itself
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt"):
                    pass
            except (SafetensorError, OSError) as e:
                raise WeightsError(f"{key}={path}: {f} is not a readable safetensors file (empty, truncated or "
                                   f"corrupt: {str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                   "copy or save it again") from None
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its own report of the same keys, and a bar, would precede ours
    hf_logging.disable_progress_bar()
    try:
        _, info = AutoModelForImageTextToText.from_pretrained(path, device_map="meta", output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # a corrupt header, an unknown model type
        raise WeightsError(f"{key}={path} does not load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    problem = _loading_problems(path, info)
    if problem:
        raise WeightsError(f"{key}={path}: {problem}")
    bad = []
    for f in files:
        for name, tensor in _iter_tensors(f):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    if bad:
        raise WeightsError(f"{key}={path}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                           f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")


def _iter_tensors(file: Path):
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    else:
        yield from torch.load(file, map_location="cpu", weights_only=True).items()


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, **kwargs: Any):
    """A model folder's model; refuses weights that do not match it (transformers would randomly initialise
    the missing ones with only a warning)."""
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (expected a config.json there)")
    with quiet_transformers():
        model, info = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, output_loading_info=True, **kwargs)
    problem = _loading_problems(path, info)
    if problem:
        raise WeightsError(f"{path}: {problem}")
    return model


def resolve_model(cfg: Any) -> Path:
    """The folder a model config points to: a local checkpoint path, or a project-built tiny model."""
    if cfg.path:
        return Path(cfg.path)
    return build_tiny(cfg.arch, cfg.size, cfg.seed, cfg.vocab_size, cfg.head_vocab)


# ----------------------------------------------------------------------------- LoRA (peft)

TEACHER_ADAPTER = "teacher"  # the teacher's own adapter set when model.lora.teacher=adapters (student's: "default")
VISION_MODULES = r".*\.visual\..*"  # Qwen2.5-VL's and Qwen3-VL's vision tower (transformers 5 names)


def lora_config(lora: Any):
    """peft's LoraConfig from the config's `model.lora` mapping (rank, alpha, dropout, target_modules, vision).
    Modules named by `target_modules` (peft's suffix match) get adapters in the language model; in the vision
    tower too only with `vision: true` (its MLPs share the language model's names)."""
    from peft import LoraConfig

    # (a validated mapping: rank, dropout and a non-empty target_modules are the config schema's checks)
    return LoraConfig(r=int(lora.rank), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                      target_modules=list(lora.target_modules), bias="none",
                      exclude_modules=None if lora.vision else VISION_MODULES)


def apply_lora(model: torch.nn.Module, lora: Any, teacher_adapter: bool = False) -> torch.nn.Module:
    """Inject LoRA adapters into `model` in place (peft's `inject_adapter_in_model`: the model keeps its class,
    config and forward, so everything that runs a plain model runs this one) and freeze every other weight.
    With `teacher_adapter` a second adapter set, `TEACHER_ADAPTER`, starts as a copy of the student's and never
    trains (training/lora.py updates it on the teacher's schedule). Returns the model."""
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = lora_config(lora)
    model.requires_grad_(False)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"model.lora.target_modules={list(config.target_modules)}: {e}") from None
    for what, module in (("output head", model.get_output_embeddings()), ("embedding", model.get_input_embeddings())):
        # the trainer computes the head's log-probs from its weight directly, which would skip an adapter there
        if isinstance(module, BaseTunerLayer):
            raise ConfigError(f"model.lora.target_modules={sorted(config.target_modules)} puts an adapter on the "
                              f"{what}; valid: modules inside the transformer layers (q_proj, k_proj, v_proj, "
                              "o_proj, gate_proj, up_proj, down_proj)")
    if teacher_adapter:
        with warnings.catch_warnings():  # peft warns that a second adapter set is one: here it is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, model, adapter_name=TEACHER_ADAPTER)
        with torch.no_grad():
            for layer in lora_layers(model):
                for part in ("lora_A", "lora_B"):
                    getattr(layer, part)[TEACHER_ADAPTER].load_state_dict(getattr(layer, part)["default"].state_dict())
    for layer in lora_layers(model):  # only the student's adapters train, whatever peft marked on injection
        layer.set_adapter("default")
    return model


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """peft's LoRA layers of `model` (empty for a model without adapters)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def has_lora(model: torch.nn.Module) -> bool:
    return any(True for _ in lora_layers(model))


@contextlib.contextmanager
def adapters_as(model: torch.nn.Module, adapter: str | None) -> Iterator[None]:
    """Run `model` as its base (`adapter=None`: every adapter off, peft's `enable_adapters(False)`, the same
    switch `PeftModel.disable_adapter()` uses) or with adapter set `adapter` in place of the student's. No
    weight is copied. The student's adapters are active (and trainable) again on exit."""
    layers = lora_layers(model)
    try:
        for layer in layers:
            if adapter is None:
                layer.enable_adapters(False)
            else:
                layer.set_adapter(adapter, inference_mode=True)
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
            layer.set_adapter("default")


class AdapterView:
    """`model` run through `adapters_as(model, adapter)`: what the trainer's forward helpers take for a model.
    They reach the model's own attributes (config, output head, rope deltas) through `.module`, as they reach
    a DeepSpeed engine's."""

    def __init__(self, model: torch.nn.Module, adapter: str | None) -> None:
        self.module, self.adapter = model, adapter

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with adapters_as(self.module, self.adapter):
            return self.module(*args, **kwargs)

    @property
    def training(self) -> bool:
        return self.module.training

    def eval(self) -> AdapterView:
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> AdapterView:
        self.module.train(mode)
        return self


def merge_delta(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * B @ A (a Linear's LoRA merged into its weight, as peft's `merge` computes it), in fp32 and
    cast back to W's dtype."""
    return (weight.float() + scaling * (lora_b.float() @ lora_a.float())).to(weight.dtype)


def lora_export_names(model: torch.nn.Module) -> dict[str, tuple[str, str, float] | None]:
    """For every parameter name of `model`: None when the exported (merged, plain-model) weights leave it out
    (an adapter's), else (its plain-model name, the LoRA layer's module prefix or "", scaling). A model
    without adapters maps each name to itself."""
    merged = {}
    for prefix, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and "default" in scaling and hasattr(module, "lora_A"):
            merged[prefix] = float(scaling["default"])
    out: dict[str, tuple[str, str, float] | None] = {}
    for name, _ in model.named_parameters():
        if ".lora_" in name:
            out[name] = None
            continue
        plain = name.replace(".base_layer.", ".")
        prefix = name.split(".base_layer.")[0] if ".base_layer." in name else ""
        is_weight = prefix and name == f"{prefix}.base_layer.weight"
        out[name] = (plain, prefix if is_weight else "", merged.get(prefix, 0.0) if is_weight else 0.0)
    return out


def merged_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA model's full state dict `state` (its own names) as the plain model's: each adapted weight merged
    (`merge_delta` with the student's adapter), `.base_layer.` dropped from names, adapters left out. A state
    without adapters comes back as it is. Tensors not in `state` (tied aliases) stay out."""
    names = lora_export_names(model)
    if all(v is None or v[0] == k for k, v in names.items()):
        return state
    out = {}
    for name, tensor in state.items():
        target = names.get(name, (name, "", 0.0))
        if target is None:
            continue
        plain, prefix, scaling = target
        if prefix:
            tensor = merge_delta(tensor, state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"],
                                 scaling)
        out[plain] = tensor
    return out
