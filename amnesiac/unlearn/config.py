"""Unlearning run configuration and method-name parsing (`npo_klr`, `ga_gdr_sure`, `simnpo`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.prompt import PromptOptions
from ..io import hash_obj
from ..registry import lookup, registry
from .common import UnlearnError


@dataclass
class UnlearnConfig(PromptOptions):
    """Every unlearning option; the prompt format (PromptOptions: template, chat_template, system_prompt) builds
    the training prompts and the early-stop monitor's, and is recorded in unlearn.json for the audit."""
    # objective (docs/science.md §2)
    method: str = "npo"  # ga | npo | simnpo | idkdpo | rmu, optionally with _gdr/_klr and _sure (e.g. npo_klr)
    regularizer: str | None = None  # none | gdr | klr (None: from the method name, else none)
    alpha: float = 1.0  # regulariser weight
    beta: float | None = None  # NPO/IdkDPO β (default 0.1), SimNPO β (default 2.5)
    gamma: float = 0.0  # SimNPO γ
    rmu_layer: int | None = None  # RMU layer ℓ (default n_layers // 2); trains MLPs of ℓ−2..ℓ
    rmu_c: float = 6.5  # RMU steering scale c
    rmu_alpha: float = 100.0  # RMU retain-term weight
    # optimiser and schedule (the paper's regime: AdamW, lr 1e-5, constant)
    lr: float = 1e-5  # AdamW learning rate (paper regime: 1e-5; SURE: ~1e-4)
    schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.01  # on ≥2-D tensors only (HF Trainer convention: no decay on norms/biases)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW (β1, β2)
    adam_eps: float = 1e-8  # AdamW ε
    max_grad_norm: float | None = 1.0  # gradient clipping norm (0 or None: no clipping)
    batch_size: int = 8  # forget batch size (multi-process: the global micro-batch)
    retain_batch_size: int | None = None  # retain batch size (default: batch_size)
    grad_accum: int = 1  # gradient accumulation micro-batches per step
    epochs: float = 5.0  # over the forget set (retain batches cycle alongside)
    max_steps: int | None = None  # optimizer steps; overrides epochs
    seed: int = 0  # batches, refusals, RMU direction, LoRA init
    precision: str = "float32"  # float32 | bfloat16 (weights and optimizer in bf16) | bf16-mixed (autocast)
    device: str = "auto"  # auto (CUDA if available) | cpu | cuda | cuda:N
    gradient_checkpointing: bool = False  # trade compute for activation memory
    max_length: int | None = None  # truncate examples to this many tokens (default: the model's context)
    # reference model
    reference: str = "auto"  # auto | precompute (no 2nd model) | copy (a frozen copy)
    ref_max_gb: float = 2.0  # auto: precompute when it needs at most this much RAM
    # SURE
    sure_percentile: float | None = None  # SURE: only rows at or above this saliency percentile train
    sure_scope: str = "matrix"  # SURE threshold per weight matrix or global
    # quantization-aware unlearning (docs/science.md §2b; robust.py): train through these quantizers
    robust_to: str | None = None  # comma list of quantizer names: q4_1,q8_0,rtn4_g128 (attacks.quant.spec)
    robust_noise: float = 0.0  # also train on θ + U(−σ/2, σ/2)·Δ(4-bit g64): unknown quantizers
    # LoRA
    lora_rank: int | None = None  # train rank-r LoRA adapters (merged on save)
    lora_alpha: float | None = None  # LoRA α (default 2r)
    lora_dropout: float = 0.0  # LoRA dropout
    lora_targets: str = "all-linear"  # all-linear, or a comma list of module names
    # bookkeeping
    checkpoint_every: int | None = None  # checkpoint every N steps (OUT/checkpoint; rerun with --resume)
    keep_checkpoint: bool = False  # keep OUT/checkpoint after finishing
    early_stop_recall: float | None = None  # stop once monitor forget recall ≤ this
    early_stop_relative: bool = False  # threshold = early_stop_recall × recall before training
    early_stop_every: int = 10  # evaluate the early-stop monitor every k steps
    monitor_size: int = 32  # forget items in the early-stop monitor
    log_every: int = 1  # write a log.jsonl record every k steps
    track_rounding: bool | None = None  # log per step the share of updates rounded away (None: if ≤ 300M trained values)
    progress: bool = True  # progress bar
    # multi-process runs (distributed.py): batch_size is the global micro-batch there
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes 8-bit states; runs on CPU and CUDA)
    strategy: str = "ddp"  # ddp (replicated) | fsdp (FSDP2: weights, grads, optimizer states sharded; fsdp.py)

    # fields that do not change the trained weights (may differ on resume)
    _NON_TRAINING = ("checkpoint_every", "keep_checkpoint", "log_every", "progress", "reference", "ref_max_gb",
                     "strategy", "track_rounding")  # strategy: same weights to float rounding, so a checkpoint resumes across it

    def __post_init__(self) -> None:
        """Every option checked before any work: a bad value raises UnlearnError naming it."""
        from ..errors import UserError, check_choice, check_number as num

        try:
            num("lr", self.lr, gt=0)
            num("alpha", self.alpha, ge=0)
            num("beta", self.beta, gt=0, optional=True)
            num("gamma", self.gamma)
            num("rmu_layer", self.rmu_layer, ge=0, integer=True, optional=True)
            num("rmu_c", self.rmu_c, gt=0)
            num("rmu_alpha", self.rmu_alpha, ge=0)
            check_choice("schedule", self.schedule, ("constant", "linear", "cosine"))
            num("warmup_steps", self.warmup_steps, ge=0, integer=True)
            num("weight_decay", self.weight_decay, ge=0)
            if len(tuple(self.adam_betas)) != 2:
                raise UserError(f"adam_betas must be two numbers, got {self.adam_betas!r}")
            for b in self.adam_betas:
                num("adam_betas", b, ge=0, lt=1)
            num("adam_eps", self.adam_eps, gt=0)
            num("max_grad_norm", self.max_grad_norm, ge=0, optional=True)
            num("batch_size", self.batch_size, ge=1, integer=True)
            num("retain_batch_size", self.retain_batch_size, ge=1, integer=True, optional=True)
            num("grad_accum", self.grad_accum, ge=1, integer=True)
            num("epochs", self.epochs, gt=0)
            num("max_steps", self.max_steps, ge=1, integer=True, optional=True)
            check_choice("precision", self.precision, ("float32", "bfloat16", "bf16-mixed"))
            num("max_length", self.max_length, ge=2, integer=True, optional=True)
            check_choice("reference", self.reference, ("auto", "precompute", "copy"))
            num("ref_max_gb", self.ref_max_gb, ge=0)
            num("sure_percentile", self.sure_percentile, gt=0, lt=100, optional=True)
            check_choice("sure_scope", self.sure_scope, ("matrix", "global"))
            num("robust_noise", self.robust_noise, ge=0, le=1)
            num("lora_rank", self.lora_rank, ge=1, integer=True, optional=True)
            num("lora_alpha", self.lora_alpha, gt=0, optional=True)
            num("lora_dropout", self.lora_dropout, ge=0, lt=1)
            num("checkpoint_every", self.checkpoint_every, ge=1, integer=True, optional=True)
            num("early_stop_recall", self.early_stop_recall, ge=0, le=1, optional=True)
            num("early_stop_every", self.early_stop_every, ge=1, integer=True)
            num("monitor_size", self.monitor_size, ge=1, integer=True)
            num("log_every", self.log_every, ge=1, integer=True)
            check_choice("optimizer", self.optimizer, ("adamw", "adamw8bit"))
            self.prompt_format()  # a template without {question}, or a system prompt without a chat template
            if self.robust_to is not None:
                from ..attacks.quant.spec import parse_names

                parse_names(self.robust_to)  # a typo fails here, before any model loads or OUT is touched
        except UserError as e:
            raise UnlearnError(str(e)) from None
        except ValueError as e:  # parse_names
            raise UnlearnError(f"robust_to: {e}") from None
        parse_method(self.method, self.regularizer, self.sure_percentile)

    def resolved(self) -> tuple[str, str, bool]:
        return parse_method(self.method, self.regularizer, self.sure_percentile)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    def training_hash(self) -> str:
        skip = set(self._NON_TRAINING)
        if not self.prompt_explicit():  # the default prompt format: checkpoints written before the option resume
            skip |= {"template", "chat_template", "system_prompt"}
        return hash_obj({k: v for k, v in self.to_json().items() if k not in skip})

    @classmethod
    def from_kwargs(cls, **kw) -> "UnlearnConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise UnlearnError(f"unknown unlearn option(s) {', '.join(bad)}; available: {', '.join(sorted(names))}")
        return cls(**kw)


def parse_method(name: str, regularizer: str | None = None, sure_percentile: float | None = None) -> tuple[str, str, bool]:
    """'NPO_KLR' → ('npo', 'klr', False); 'ga_gdr_sure' → ('ga', 'gdr', True); 'simnpo' → ('simnpo', 'none', False).

    A regulariser given both in the name and explicitly must agree. Unknown names raise, listing what exists."""
    # the method and regulariser tables are filled by this package's __init__ (imported before this module)
    parts = [p for p in name.lower().replace("-", "_").split("_") if p]
    if not parts:
        raise UnlearnError("empty method name")
    sure = sure_percentile is not None
    if parts[-1] == "robust":  # quantization-aware variant: the formats come from robust_to (api checks)
        parts = parts[:-1]
    if parts and parts[-1] == "sure":
        sure, parts = True, parts[:-1]
    if not parts:
        raise UnlearnError(f"cannot parse method {name!r}: expected METHOD[_REGULARIZER][_sure][_robust]")
    methods, regs = registry("unlearn_methods"), registry("regularizers")
    m = parts[0]
    if m not in methods:
        combos = ", ".join(sorted(methods)) + f" (optionally _{'/_'.join(sorted(regs))}, _sure, _robust)"
        raise UnlearnError(f"unknown unlearning method {name!r}; available: {combos}")
    if len(parts) > 2:
        raise UnlearnError(f"cannot parse method {name!r}: expected METHOD[_REGULARIZER][_sure][_robust]")
    r_name = parts[1] if len(parts) == 2 else None
    if regularizer is not None:
        if r_name is not None and r_name != regularizer.lower():
            raise UnlearnError(f"method {name!r} names regulariser {r_name!r} but regularizer={regularizer!r} was given")
        r_name = regularizer.lower()
    r_name = r_name or "none"
    try:
        lookup("regularizers", r_name)
    except KeyError as e:
        raise UnlearnError(e.args[0]) from None
    return m, r_name, sure


def wants_robust(name: str) -> bool:
    """'npo_klr_robust' → True: the name asks for quantization-aware training (robust_to must say for what)."""
    return name.lower().replace("-", "_").rstrip("_").endswith("_robust")


SURE_DEFAULT_PERCENTILE = 90.0  # "_sure" without an explicit percentile: top 10 % of rows (docs/science.md §1)
