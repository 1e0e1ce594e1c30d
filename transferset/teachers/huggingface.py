"""Hugging Face teachers: `hf:DIR`, a model directory written by `save_pretrained`.

Loads `AutoModelForCausalLM` (logits `[B, L, V]` per token) or
`AutoModelForSequenceClassification` (`[B, C]`, class targets through the dense
kind), chosen by `config.json`'s `architectures`. Recognised by content: a
directory holding `config.json`.

Nothing reaches the network and nothing from the directory runs as code:
`local_files_only=True` and `trust_remote_code=False` on every call, and a config
asking for custom code (`auto_map`) is refused before transformers sees it.
Weights are read from safetensors; a directory holding only `pytorch_model.bin`
(a pickle) needs `--trust-checkpoint`. The model is loaded in float32;
`run_teachers`' autocast gives bf16/fp16 on CUDA.

The fingerprint hashes, without loading, what decides the outputs: `config.json`,
the weight files transformers reads, and the tokenizer files (the directory must
hold the tokenizer the model was trained with: ensemble members must share one
vocabulary, `check_shared_vocabulary`). Names are hashed relative to the
directory, so moving it changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

from transferset.errors import UserError, first_line
from transferset.io import file_sha256
from transferset.teachers import Teacher, TeacherSpec, register
from transferset.text.tokenizer import load_tokenizer, tokenizer_fingerprint

CAUSAL_LM, SEQUENCE_CLASSIFICATION = "causal-lm", "sequence-classification"
_SAVE_HINT = "save the model there with model.save_pretrained(DIR) and its tokenizer with tokenizer.save_pretrained(DIR)"


class HuggingFaceLoader:
    kind = "hf"

    def recognises(self, target: str) -> bool:
        return Path(target).is_dir() and (Path(target) / "config.json").is_file()

    def fingerprint(self, target: str, spec: TeacherSpec) -> dict:
        folder = model_directory(target)
        weights, _ = weight_files(folder)
        digest = hashlib.sha256()
        for path in weights:  # relative names: the same model in another place is the same teacher
            digest.update(path.name.encode() + b"\0" + bytes.fromhex(file_sha256(path)))
        return {"config_sha256": file_sha256(folder / "config.json"), "weights_sha256": digest.hexdigest(),
                "tokenizer_sha256": tokenizer_fingerprint(folder, tokenizer_file(folder))}

    def load(self, target: str, spec: TeacherSpec, trust: bool) -> Teacher:
        folder = model_directory(target)
        config = read_config(folder)
        architecture, task = pick_architecture(folder, config)
        _, safe = weight_files(folder)
        if not safe and not trust:
            raise UserError(f"teacher {str(folder)!r} holds only pytorch_model.bin weights (a pickle, which may run code when "
                            f"loaded); if you trust where it came from, pass --trust-checkpoint (better: re-save it with "
                            f"save_pretrained(DIR, safe_serialization=True))")
        tokenizer = load_tokenizer(tokenizer_file(folder).parent, "--teacher")
        refuse_vocabulary_mismatch(folder, "config.json's vocab_size", config_vocab_size(config), tokenizer.vocab_size)
        model = from_pretrained(folder, task, safe)
        if task == SEQUENCE_CLASSIFICATION and getattr(model.config, "pad_token_id", None) is None:
            # decoder classifiers (GPT-2, Llama) pool the last non-pad token and fail on any batch of 2+ rows without one;
            # read from the loaded config: config.json may leave out a class default
            raise UserError(f"teacher {str(folder)!r} is a sequence classifier without a pad_token_id in config.json, so it cannot "
                            f"find each row's last token in a padded batch; set it to its tokenizer's pad id ({tokenizer.pad_id})")
        # What the model really holds, whatever the config said: the ids it embeds and (causal LM) the logits' last dimension
        output = model.get_output_embeddings() if task == CAUSAL_LM else None
        for what, layer, size in (("its input embeddings", model.get_input_embeddings(), "num_embeddings"),
                                  ("its output layer", output, "out_features")):
            refuse_vocabulary_mismatch(folder, what, getattr(layer, size, None), tokenizer.vocab_size)
        extra = {"architecture": architecture, "tokenizer_fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size}
        sha = hashlib.sha256(json.dumps(self.fingerprint(target, spec), sort_keys=True).encode()).hexdigest()
        return Teacher(folder.name, "hf", sha, LogitsOf(model, task), spec, extra=extra)


class LogitsOf(torch.nn.Module):
    """A transformers model as a teacher: named `input_ids` (any dtype) and optional
    `attention_mask` in, logits out (`[B, L, V]` causal LM, `[B, C]` classifier)."""

    def __init__(self, model: torch.nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = input_ids.long()  # a Parquet source may hold ids as int32 or float
        mask = None if attention_mask is None else attention_mask.long()
        pad_id = getattr(self.model.config, "pad_token_id", None)
        if self.task == SEQUENCE_CLASSIFICATION and mask is not None and pad_id is not None:
            # Decoder classifiers (GPT-2, Llama) pool the last token that is not their pad id, whatever the mask says:
            # write that id where the mask says padding, so rows padded with any id pool their real last token.
            ids = ids.masked_fill(mask == 0, pad_id)
        return self.model(input_ids=ids, attention_mask=mask).logits


def model_directory(target: str) -> Path:
    folder = Path(target)
    if not folder.exists():
        raise UserError(f"--teacher hf:{target} does not exist; give a local model directory (nothing is downloaded)")
    if not folder.is_dir():
        raise UserError(f"--teacher hf:{target} is a file, not a directory; give the directory save_pretrained wrote")
    if not (folder / "config.json").is_file():
        raise UserError(f"teacher {target!r} has no config.json, so it is not a Hugging Face model directory; {_SAVE_HINT}")
    return folder


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise UserError(f"teacher {str(folder)!r} has a config.json that is not JSON ({first_line(error)}); save the model again") from None
    if not isinstance(config, dict):
        raise UserError(f"teacher {str(folder)!r} has a config.json that is not a JSON object; save the model again")
    if "auto_map" in config:
        raise UserError(f"teacher {str(folder)!r} needs custom code from its directory (config.json has auto_map), and transferset "
                        f"never runs a model's own code (trust_remote_code=False); use an architecture transformers ships")
    return config


def pick_architecture(folder: Path, config: dict) -> tuple[str, str]:
    """The first of config.json's `architectures` that is a causal LM or a sequence classifier, and which."""
    named = config.get("architectures") or []
    for architecture in named if isinstance(named, list) else []:
        task = task_of(str(architecture))
        if task is not None:
            return str(architecture), task
    found = ", ".join(map(str, named)) if isinstance(named, list) and named else "none"
    raise UserError(f"teacher {str(folder)!r} is not a causal LM or a sequence classifier (config.json architectures: {found}); "
                    f"transferset loads ...ForCausalLM and ...ForSequenceClassification models")


def task_of(architecture: str) -> str | None:
    """CAUSAL_LM, SEQUENCE_CLASSIFICATION or None, by transformers' own tables (GPT2LMHeadModel is a causal LM)."""
    if architecture.endswith("ForCausalLM"):  # by name first: refusals before the load need no transformers import (~5 s)
        return CAUSAL_LM
    if architecture.endswith("ForSequenceClassification"):
        return SEQUENCE_CLASSIFICATION
    auto = require_transformers().models.auto.modeling_auto
    if architecture in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return CAUSAL_LM
    if architecture in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values():
        return SEQUENCE_CLASSIFICATION
    return None


def require_transformers():
    try:
        import safetensors  # noqa: F401  (the weights' format)
        import transformers
        import transformers.models.auto.modeling_auto  # noqa: F401
    except ImportError:
        raise UserError('hf: teachers need the transformers and safetensors packages; pip install "transferset[text]"') from None
    return transformers


def weight_files(folder: Path) -> tuple[list[Path], bool]:
    """The files transformers reads the weights from (an index and its shards, or one
    file), and whether they are safetensors (no pickle)."""
    for name, safe in (("model.safetensors", True), ("pytorch_model.bin", False)):
        index = folder / f"{name}.index.json"
        if index.is_file():
            return [index, *shards_of(index)], safe
        if (folder / name).is_file():
            return [folder / name], safe
    raise UserError(f"teacher {str(folder)!r} holds no weights (model.safetensors); {_SAVE_HINT}")


def shards_of(index: Path) -> list[Path]:
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UserError(f"teacher weights index {str(index)!r} is damaged (no weight_map); save the model again") from None
    for name in names:
        if not (index.parent / name).is_file():
            raise UserError(f"teacher weights index {str(index)!r} names shard {name!r}, which is missing; copy the whole directory")
    return [index.parent / name for name in names]


def tokenizer_file(folder: Path) -> Path:
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise UserError(f"teacher {str(folder)!r} has no tokenizer.json, so its vocabulary cannot be checked; save the tokenizer "
                        f"the model was trained with beside it: AutoTokenizer.from_pretrained(...).save_pretrained(DIR) (a fast tokenizer)")
    return file


def config_vocab_size(config: dict) -> int | None:
    for section in (config, config.get("text_config")):  # multimodal configs keep it in text_config
        if isinstance(section, dict) and isinstance(section.get("vocab_size"), int):
            return section["vocab_size"]
    return None


def refuse_vocabulary_mismatch(folder: Path, what: str, model_size: int | None, tokenizer_size: int) -> None:
    """A tokenizer that can produce ids the model has no row for is refused. A model whose
    embedding matrix is padded past its tokenizer (Qwen2, Pythia, Phi-2 round it up) is
    kept whole: its per-token targets have one column per model row, as its logits do,
    and the padding rows simply hold the (tiny) probabilities the model gives them."""
    if model_size is not None and model_size < tokenizer_size:
        raise UserError(f"teacher {str(folder)!r} has a vocabulary of {model_size} ({what}) but its tokenizer has {tokenizer_size} "
                        f"tokens, so some token ids have no row in the model; save the tokenizer the model was trained with beside it")


def from_pretrained(folder: Path, task: str, safe: bool) -> torch.nn.Module:
    transformers = require_transformers()
    auto = transformers.AutoModelForCausalLM if task == CAUSAL_LM else transformers.AutoModelForSequenceClassification
    try:
        with quiet_transformers():
            # With trust and only a .bin, transformers reads it with its own torch.load, which
            # defaults to weights_only=True (tensors and plain containers only) in transformers 5.
            model, info = auto.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                               use_safetensors=True if safe else None, dtype=torch.float32,
                                               output_loading_info=True)
    except Exception as error:  # transformers raises OSError, ValueError, RuntimeError... for a bad directory
        raise UserError(f"teacher {str(folder)!r} could not be loaded by transformers ({type(error).__name__}: "
                        f"{first_line(error)[:200]}); {_SAVE_HINT}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers initialises these at random and carries on: a teacher must not
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"teacher {str(folder)!r} has no weights for {missing[0]}{more} in its checkpoint, which would be random; "
                        f"save the trained {task} model (its head included) with save_pretrained")
    model.config.use_cache = False  # one forward per batch: a key/value cache would only hold memory
    return model


@contextlib.contextmanager
def quiet_transformers():
    """transformers' progress bars and warnings off while loading (a command's stderr is one line
    on failure); what it would warn about (missing weights) is checked by us instead."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def check_shared_vocabulary(teachers: list[Teacher]) -> None:
    """Refuse an ensemble whose members' tokenizers differ (only members that record one:
    hf teachers). Token id 17 must mean the same token to every member."""
    recorded = [t for t in teachers if t.extra and "tokenizer_fingerprint" in t.extra]
    for other in recorded[1:]:
        first = recorded[0]
        if other.extra["tokenizer_fingerprint"] != first.extra["tokenizer_fingerprint"]:
            described = "; ".join(f"{t.name}: {t.extra['vocab_size']} tokens, fingerprint {t.extra['tokenizer_fingerprint'][:12]}"
                                  for t in (first, other))
            raise UserError(f"teachers {first.name!r} and {other.name!r} use different tokenizers ({described}); "
                            f"every member of an ensemble must share one vocabulary")


register(HuggingFaceLoader())
