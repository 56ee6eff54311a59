"""The audit's options (AuditConfig, the CLI's `amnesiac audit` options) and its attack suites: checked before any
model is loaded, so a bad option costs nothing."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data.prompt import PromptOptions
from .errors import UserError
from .metrics.recovery import ALPHA, MARGIN, check_margin

SUITES = {
    "quick": ["fp", "rtn8", "rtn4_g64", "paraphrase"],
    "full": ["fp", "rtn8", "rtn4_g64", "rtn4_g128_asym", "rtn3_g64", "rtn2_g64", "gptq4_g128", "gptq8_g128",
             "awq4_g128", "hqq4", "quanto4", "quanto8", "torchao4", "bnb_nf4", "paraphrase", "icl_forget", "icl_same_person", "step_by_step", "cloze", "relearn"],
}


@dataclass
class AuditConfig(PromptOptions):
    """Every audit option. The prompt format (PromptOptions) defaults to the one recorded in the unlearned
    model's unlearn.json: every model and attack is measured in the format the unlearning trained with."""
    suite: str = "quick"  # quick | full: the attacks tried (SUITES above)
    attacks: list[str] | None = None  # overrides the suite's list: quantizer names, prompt attacks, relearn
    seed: int = 0  # bootstrap resampling, retain subset, prompt variants, relearning and calibration samples
    margin: float = MARGIN  # smallest difference of the verdict's metric that counts (absolute, in [0, 1))
    alpha: float = ALPHA  # one-sided level after Holm correction over the attacks
    n_boot: int = 10000  # paired-bootstrap resamples (p ≥ 1/(n_boot+1): enough for Holm over many attacks)
    metric: str | None = None  # the verdict's metric; None: chosen from the data (measure.scoring_for)
    floor: float | None = None  # without a retrained model: the level the target must exceed (default 0)
    max_retain: int = 300  # retain items evaluated (a fixed random subset: recall, not verdict)
    batch_size: int = 64  # generation / scoring batch
    dtype: str = "float32"  # float32 | bfloat16 | float16: the dtype every model is loaded and measured in
    device: str = "auto"  # auto (CUDA if available) | cpu | cuda | cuda:N
    device_map: str | None = None  # "auto": spread a large model over the visible GPUs (accelerate)
    relearn_steps: int = 20  # relearning attack: optimizer steps on half of the forget set
    relearn_lr: float = 1e-3  # relearning attack: learning rate
    mia: bool = False  # membership inference on forget vs holdout (the CLI sets it when --holdout is given)
    utility: list[str] | None = None  # lm-evaluation-harness tasks run under every model attack (e.g. mmlu,triviaqa)
    utility_limit: float | None = None  # documents per utility task (an int, or a fraction): a quick look
    utility_task_dirs: str | None = None  # folders of extra task YAMLs (comma-separated), e.g. local tasks

    def __post_init__(self):
        check_margin(self.margin)
        self.prompt_format()  # a template without {question}, a system prompt without a chat template
        if self.suite not in SUITES:
            raise UserError(f"unknown suite {self.suite!r}; available: {', '.join(SUITES)}")
        if not 0 < self.alpha < 1:
            raise UserError(f"alpha must lie in (0, 1), got {self.alpha}")
        for name in ("n_boot", "max_retain", "batch_size", "relearn_steps"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.utility:
            from .metrics.utility import _lm_eval

            _lm_eval()  # not installed: the install hint now, not after the first model has been measured
        if not (self.relearn_lr > 0 and np.isfinite(self.relearn_lr)):
            raise UserError(f"relearn_lr must be a positive finite number, got {self.relearn_lr}")
        from .models.load import check_device, resolve_dtype

        try:
            resolve_dtype(self.dtype)
        except ValueError as e:
            raise UserError(str(e)) from None
        check_device(self.device)
        if self.device_map not in (None, "auto"):
            raise UserError(f"device_map must be 'auto' or unset, got {self.device_map!r}")
        from .measure import check_metric

        check_metric(self.metric)
        self.attack_list()

    def attack_list(self) -> list[str]:
        """The attacks to run, each claimed by a registered attack (attacks.base.resolve_attack)."""
        from .attacks.base import audit_vocabulary, resolve_attack

        names = [n.strip().lower() for n in (self.attacks if self.attacks else SUITES[self.suite]) if n.strip()]
        unknown = []
        for n in names:
            try:
                resolve_attack(n)
            except KeyError:
                unknown.append(n)
        if unknown:
            raise UserError(f"unknown attack(s) {unknown}; available: {', '.join(audit_vocabulary())}")
        if not names:
            raise UserError("no attacks given")
        return list(dict.fromkeys(names))


def available_attacks(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Drop attacks that cannot run here (a quantization backend not installed); say why."""
    from .attacks.base import resolve_attack

    keep, skipped = [], {}
    for n in names:
        why = resolve_attack(n)[1].unavailable(n)
        if why:
            skipped[n] = why
        else:
            keep.append(n)
    return keep, skipped
