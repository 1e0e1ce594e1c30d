"""The training configuration: one typed dataclass, validated all at once.

`validate()` collects every problem and raises one `UserError` that names each
flag, so a user fixes a command line in one go. Data-dependent checks (the
transfer set's combine method, whether it has labels) happen in `check_data`,
once the data is open.

The *fingerprint* hashes exactly the fields that change the training
trajectory (data, student, loss, optimiser, schedule, seed, precision); a
checkpoint remembers it and `--resume` refuses a checkpoint whose fingerprint
differs. Fields that do not change the weights (device, workers, evaluation
sources, checkpoint cadence, output flags) are left out, so a run can be
resumed on another machine or with a different --checkpoint-every. --workers is
in: with DataLoader workers the batch order interleaves per worker (order.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from transferset.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")  # train/optim.py
DEFAULT_GRAD_CLIP = 5.0  # = train/optim.py's (repeated so that config needs no torch; a test keeps them equal)
DEFAULT_WARMUP_FRACTION = 0.05

# Fields that do not change the trained weights: not part of the fingerprint.
NOT_FINGERPRINTED = (
    "out", "device", "eval", "eval_label_column", "eval_batch_size",
    "checkpoint_every", "keep_checkpoints", "resume", "overwrite", "trust_checkpoint", "verify", "quiet", "json",
    "source_root",  # where the sources of a reference set are; their content is checked by sha256
)


@dataclass
class TrainConfig:
    # -- data: exactly one of transfer / data -------------------------------
    transfer: str | None = None
    """transfer-set directory (soft targets, optional labels, inputs)"""
    data: list[str] | None = None
    """labelled Parquet files trained on hard labels only"""
    input: dict[str, Any] | None = None
    """with --data: the InputSpec as a dict (with --transfer it comes from the set;
    input flags given with --transfer arrive here as {flag: value} and are refused)"""
    label_column: str = "label"
    """with --data: the integer label column"""
    num_classes: int | None = None
    """with --data: number of classes (default: largest label + 1)"""

    # -- student --------------------------------------------------------------
    student: str = "train.students:mlp"
    student_args: dict[str, Any] = field(default_factory=dict)

    # -- loss -----------------------------------------------------------------
    loss: str = "kd"
    """kd: T^2 KL(p_T || q_T); mse: logit matching (geometric targets only)"""
    alpha: float | None = None
    """weight of the soft term; 1 - alpha weights the hard CE on labelled rows
    (None: 1, pure distillation; only for --transfer)"""
    temperature: float | None = None
    """None: the transfer set's stored T"""

    # -- optimisation -----------------------------------------------------------
    optimizer: str = "sgd"
    lr: float | None = None
    """None: 0.05 for sgd, 1e-3 for adamw"""
    momentum: float = 0.9
    weight_decay: float | None = None
    """None: 0 for sgd, 0.01 for adamw"""
    warmup_steps: int | None = None
    warmup_fraction: float | None = None
    """None (and no --warmup-steps): DEFAULT_WARMUP_FRACTION"""
    min_lr_ratio: float = 0.0
    grad_clip: float | None = DEFAULT_GRAD_CLIP
    """max gradient norm; 0 or None: no clipping"""
    epochs: int = 10
    batch_size: int = 128
    tokens_per_batch: int | None = None
    """per-token sets: tokens per optimiser step; a batch is tokens_per_batch // L rows
    (set by train/data.py into batch_size once L is known)"""
    seed: int = 0
    precision: str = "fp32"
    jitter: int = 0
    """random shifts of up to this many pixels (image inputs), 0 = off"""

    # -- compute, evaluation, outputs (not fingerprinted) -------------------------
    out: str = ""
    device: str = "auto"
    workers: int = 0
    eval: list[str] = field(default_factory=list)
    eval_label_column: str = "label"
    eval_batch_size: int = 1024
    checkpoint_every: int = 0
    """also checkpoint every N optimiser steps (0: only at epoch ends)"""
    keep_checkpoints: int = 2
    resume: str | None = None
    """None, "latest", or a checkpoint path"""
    overwrite: bool = False
    verify: bool = True
    """check the transfer set's shard checksums against its manifest before training"""
    source_root: str | None = None
    """a reference set's sources (`generate --inputs reference`) are looked for here first"""
    trust_checkpoint: bool = False
    """allow a --resume checkpoint that needs full unpickling (runs code from the file)"""
    quiet: bool = False
    json: bool = False

    def validate(self) -> None:
        problems = []
        if (self.transfer is None) == (not self.data):
            problems.append("give exactly one of --transfer DIR (soft targets) or --data FILE (hard labels)")
        if self.transfer is not None and self.input is not None:
            problems.append(f"{', '.join(self.input)}: the transfer set's provenance defines its inputs; drop them")
        if self.data and self.input is None:
            problems.append("--data needs --input-shape (and --input-column, default pixels) or --transform")
        if not self.out:
            problems.append("--out is required: the run directory")
        from train.losses import SOFT_LOSSES  # the registry (imports torch; validate runs once)

        from train.lm_losses import DIVERGENCES  # per-token losses (train/lm_losses.py)

        if self.loss not in SOFT_LOSSES and self.loss not in DIVERGENCES:
            problems.append(f"unknown --loss {self.loss!r}; use {' or '.join(dict.fromkeys([*SOFT_LOSSES, *DIVERGENCES]))}")
        if self.tokens_per_batch is not None and not self.tokens_per_batch > 0:
            problems.append(f"--tokens-per-batch must be a positive integer, got {self.tokens_per_batch}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"unknown --optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.alpha is not None and not (_finite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            problems.append(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.temperature is not None and not (_finite(self.temperature) and self.temperature > 0):
            problems.append(f"--temperature must be a positive number, got {self.temperature}")
        if self.lr is not None and not (_finite(self.lr) and self.lr > 0):
            problems.append(f"--lr must be a positive number, got {self.lr}")
        if self.grad_clip is not None and not (_finite(self.grad_clip) and self.grad_clip >= 0):
            problems.append(f"--grad-clip must be a positive number (or 0: no clipping), got {self.grad_clip}")
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--eval-batch-size", self.eval_batch_size)):
            if not value > 0:
                problems.append(f"{flag} must be a positive integer, got {value}")
        for flag, value in (("--momentum", self.momentum), ("--min-lr-ratio", self.min_lr_ratio)):
            if not (_finite(value) and 0.0 <= value <= 1.0):
                problems.append(f"{flag} must be in [0, 1], got {value}")
        if self.weight_decay is not None and not (_finite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            problems.append("give --warmup-steps or --warmup-fraction, not both")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            problems.append(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_fraction is not None and not (_finite(self.warmup_fraction) and 0.0 <= self.warmup_fraction <= 1.0):
            problems.append(f"--warmup-fraction must be in [0, 1], got {self.warmup_fraction}")
        for flag, value in (("--jitter", self.jitter), ("--workers", self.workers), ("--checkpoint-every", self.checkpoint_every)):
            if value < 0:
                problems.append(f"{flag} must be >= 0, got {value}")
        if self.keep_checkpoints < 1:
            problems.append(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.transfer is not None and self.num_classes is not None:
            problems.append("--num-classes applies to --data; a transfer set records its classes: drop it")
        if self.num_classes is not None and self.num_classes < 2:
            problems.append(f"--num-classes must be >= 2, got {self.num_classes}")
        if self.resume is not None and self.overwrite:
            problems.append("--resume continues a run and --overwrite discards it: give one")
        if problems:
            raise UserError("; ".join(problems))

    # -- resolved values -------------------------------------------------------

    @property
    def resolved_alpha(self) -> float:
        return 1.0 if self.alpha is None else self.alpha

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else {"sgd": 0.05, "adamw": 1e-3}[self.optimizer]

    @property
    def resolved_warmup_fraction(self) -> float | None:
        """The warm-up fraction the schedule uses; None when --warmup-steps decides."""
        if self.warmup_steps is not None:
            return None
        return DEFAULT_WARMUP_FRACTION if self.warmup_fraction is None else self.warmup_fraction

    @property
    def resolved_grad_clip(self) -> float:
        return self.grad_clip or 0.0

    @property
    def resolved_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else {"sgd": 0.0, "adamw": 0.01}[self.optimizer]

    def check_data(self, *, has_targets: bool, num_labelled: int, combine: str | None, stored_temperature: float | None,
                   target_kind: str | None = None, kind_losses: tuple[str, ...] = (), temperature_exact: bool = True,
                   per_token: bool = False) -> None:
        """Checks that need the opened data; all problems in one error. `per_token`: the hard
        term is next-token cross-entropy, so the set needs no labels."""
        problems = []
        if has_targets and self.loss not in kind_losses:
            what = f"per-token {target_kind}" if per_token else target_kind
            problems.append(f"--loss {self.loss} does not apply to {what} targets; use --loss {' or '.join(kind_losses)}")
        if self.tokens_per_batch is not None and not per_token:
            problems.append("--tokens-per-batch applies to per-token (language-model) sets, whose rows are fixed-length token rows; "
                            "use --batch-size for class targets")
        if has_targets:
            if self.resolved_alpha < 1 and num_labelled == 0 and not per_token:
                problems.append(f"--alpha {self.alpha} asks for a hard-label term but the transfer set has no labelled rows; use --alpha 1")
            baked = {"arithmetic": "an arithmetic mean of probabilities", "specialists": "a specialist ensemble's distribution"}
            if combine in baked and self.loss == "mse":  # T baked in, no teacher logits (combine.py)
                problems.append(
                    f"--loss mse matches logits, but this transfer set stores {baked[combine]} (no teacher logits to match); "
                    "use --loss kd, or regenerate with --combine geometric"
                )
            other_t = self.temperature is not None and not math.isclose(self.temperature, stored_temperature, rel_tol=1e-6)
            if combine in baked and other_t and target_kind in (None, "dense"):
                problems.append(
                    f"--temperature {self.temperature} differs from the transfer set's T={stored_temperature}, but its {combine} targets have T baked in; "
                    f"drop --temperature, or regenerate with --combine geometric (valid at any T)"
                )
            elif other_t and not temperature_exact:
                problems.append(
                    f"--temperature {self.temperature} differs from the transfer set's T={stored_temperature}, but its {target_kind} targets "
                    f"store probabilities at T={stored_temperature} only (re-tempering a sparse support is not exact); "
                    f"drop --temperature, or regenerate the set at the T you want"
                )
        else:
            if num_labelled == 0:
                problems.append(f"--data has no labelled rows in column {self.label_column!r}; fix --label-column")
            if self.alpha is not None or self.temperature is not None or self.loss != "kd":
                problems.append("--alpha, --temperature and --loss apply to soft targets; --data trains on hard labels only: drop them")
        if problems:
            raise UserError("; ".join(problems))

    def effective_temperature(self, stored: float | None) -> float:
        return self.temperature if self.temperature is not None else (stored if stored is not None else 1.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["student_args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.student_args.items()}
        return d

    def trajectory(self) -> dict[str, Any]:
        """The fields that decide the trained weights (resolved defaults filled in)."""
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_FINGERPRINTED}
        d["alpha"], d["lr"], d["weight_decay"] = self.resolved_alpha, self.resolved_lr, self.resolved_weight_decay
        # Resolved, so that a changed default is a changed trajectory (named on resume), not a silent one.
        d["warmup_fraction"], d["grad_clip"] = self.resolved_warmup_fraction, self.resolved_grad_clip
        # Paths are not identity (a moved file is the same data): the data's identity
        # (content hashes, sizes) is hashed next to these fields instead.
        d.pop("transfer"), d.pop("data")
        if d["tokens_per_batch"] is None:
            d.pop("tokens_per_batch")  # absent, not null: runs from before the flag keep their fingerprint
        if self.transfer is not None:
            d.pop("label_column")  # a transfer set's labels are always its `label` column
        return d

    def fingerprint(self, data_identity: Any) -> str:
        """sha256 of the trajectory-defining fields plus the data's identity."""
        blob = json.dumps({"config": self.trajectory(), "data": data_identity}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
