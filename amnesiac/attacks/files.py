"""The attacks on model files, as the `amnesiac attack …` verbs run them: one config dataclass per attack
(its fields are the verb's options, a field's comment its help), and one function per attack that checks
everything before a model loads, claims --out (amnesiac.io.claim_output: never the input, never a folder
amnesiac did not write), loads, attacks, and writes attack.json (+ the model, for attacks that change
weights). Each returns the attack's record."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from ..data.prompt import PromptOptions
from ..errors import UserError, check_number
from .prompts import TRANSFORMS

CALIBRATED = ("gptq", "awq")


@dataclass
class QuantizeConfig:
    bits: int = 4  # 2–8 (backends support a subset, see docs/guides/quantization-backends.md)
    group: int | None = None  # group size along the input dim (32/64/128); default per channel (gptq/awq: 128; 0 = per channel)
    scheme: str | None = None  # sym | asym (default: sym; asym for awq)
    backend: str = "rtn"  # rtn | quanto | hqq | torchao | bnb | gguf | gptq | awq
    kind: str | None = None  # bnb: nf4 | fp4 | int8; gguf: q4_0 | q4_1 | q5_0 | q5_1 | q8_0 | q4_k | q5_k | q6_k | q4_k_m | …
    embeddings: bool = False  # also quantize input embeddings
    lm_head: bool = False  # also quantize the LM head
    calib: str | None = None  # gptq/awq: calibration data, e.g. bios:retain90 (QA items: question+answer)
    calib_n: int = 128  # gptq/awq: calibration sequences (seeded sample)
    calib_len: int = 512  # gptq/awq: max tokens per sequence
    act_order: bool = False  # gptq: columns by decreasing Hessian diagonal
    clip: bool = True  # awq: the clipping search (--no-clip skips it)
    seed: int = 0  # gptq/awq: seed of the calibration sample

    def check(self) -> None:
        """Every option, before any model loads; builds the backend's quantizer (a missing library fails here)."""
        if self.backend in CALIBRATED:
            if self.embeddings or self.lm_head:
                raise UserError(f"{self.backend} quantizes the decoder blocks only", "drop --embeddings / --lm-head")
            if not self.calib:
                raise UserError(f"{self.backend} needs calibration texts", "pass --calib DATA (e.g. bios:retain90)")
            check_number("--calib-n", self.calib_n, ge=1, integer=True)
            check_number("--calib-len", self.calib_len, ge=1, integer=True)
        else:
            quantizer(self.backend, self.bits, self.group, self.scheme or "sym", self.kind)


@dataclass
class CollapseConfig:
    bits: int = 4  # bit width of the quantizer
    group: int | None = None  # group size along the input dim; default per channel
    scheme: str = "sym"  # sym | asym
    embeddings: bool = False  # also the input embeddings
    lm_head: bool = False  # also the LM head
    backend: str = "rtn"  # quantizer with integer codes: rtn | gguf
    kind: str | None = None  # gguf format (q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, q4_k_s, q4_k_m, q5_k_s, q5_k_m)


@dataclass
class RelearnConfig(PromptOptions):
    fraction: float = 0.5  # share of the forget set trained on (0 < f < 1); recall on the rest
    steps: int = 20  # fine-tuning steps
    lr: float = 1e-4  # fine-tuning learning rate
    batch_size: int = 8  # fine-tuning batch
    by: str = "item"  # split by item | person
    control: str | None = None  # benign control: retain | text
    seed: int = 0  # seed of the split and the fine-tuning order

    def __post_init__(self) -> None:
        from .relearn import check_relearn_options

        check_relearn_options(self.fraction, self.steps, self.lr, self.batch_size, self.by, self.control)
        self.prompt_format()  # bad prompt options fail before any model loads


@dataclass
class PromptsConfig(PromptOptions):
    transforms: str = field(default="all", metadata={"help": "comma list of: " + ", ".join(TRANSFORMS)})
    k: int = 3  # in-context examples
    seed: int = 0  # seed of the in-context examples

    def __post_init__(self) -> None:
        check_number("--k", self.k, ge=0, integer=True)
        self.prompt_format()
        names = self.names()
        bad = [n for n in (names if names != "all" else []) if n not in TRANSFORMS]
        if bad or not names:
            raise UserError(f"unknown prompt transform(s) {', '.join(bad) or repr(self.transforms)}",
                            f"available: all, {', '.join(TRANSFORMS)}")

    def names(self) -> list[str] | str:
        return "all" if self.transforms == "all" else [t.strip() for t in self.transforms.split(",") if t.strip()]


@dataclass
class ProbeConfig(PromptOptions):
    layers: list[int] | None = None  # linear probe: layers to probe (default: every layer)
    batch_size: int = 32  # forward-pass batch

    def __post_init__(self) -> None:
        check_number("--batch-size", self.batch_size, ge=1, integer=True)
        self.prompt_format()


def bound_format(cfg: PromptOptions, model, tok):
    """The prompt format bound to `tok`: the model's recorded one (its unlearn.json) unless options were given
    (data.prompt.resolve_format refuses options that differ from a recorded format)."""
    from ..data.prompt import resolve_format

    return resolve_format(cfg.prompt_format(), cfg.prompt_explicit(), model).bind(tok)


def quantizer(backend: str, bits: int, group: int | None, scheme: str, kind: str | None):
    """The backend's quantizer: bits / group / scheme / kind out of the backend's range, an unknown backend or a
    missing library fail here as one-line errors."""
    from .quant.backends import get_quantizer

    check_number("--bits", bits, ge=1, integer=True)
    check_number("--group", group, ge=1, integer=True, optional=True)
    try:
        return get_quantizer(backend, bits=bits, group=group, scheme=scheme, **({"kind": kind} if kind else {}))
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise UserError(f"--backend {backend} --bits {bits}: {e}", "see `amnesiac attack quantize --help`") from None


def _claim(out: Path | None, inputs: list, overwrite: bool, kind: str):
    """io.claim_output for --out (a folder, or a .json file), or nothing to claim without --out."""
    from ..io import claim_output

    if out is None:
        return contextlib.nullcontext()
    return claim_output(out, [i for i in inputs if i is not None], overwrite=overwrite, kind=kind)


def _write(claim, rec: dict) -> None:
    """attack.json into the claimed output (late: after the attack ran)."""
    from ..io import versions, write_json

    if not hasattr(claim, "begin"):
        return
    d = claim.begin()
    write_json(d if claim.is_file else d / "attack.json", {**rec, "versions": versions()})


def _items(spec: str | None):
    from ..data import load_dataset

    return load_dataset(spec) if spec else None


def _check(device: str, *models) -> None:
    from ..models.load import check_device, check_model_dir

    check_device(device)
    for m in models:
        check_model_dir(m)


def quantize_files(model: Path, out: Path, cfg: QuantizeConfig, device: str = "auto", dtype: str = "float32",
                   overwrite: bool = False) -> dict:
    """Quantize `model` and save the dequantized model (+ attack.json) to `out`."""
    from ..models import load_model, save_model
    from ..models.load import check_device, check_model_dir, resolve_dtype
    from .quantize import awq_attack, gptq_attack, quantize_attack

    cfg.check()
    texts = None
    if cfg.backend in CALIBRATED:
        from .quant.calib import calib_texts_from_items

        texts = calib_texts_from_items(_items(cfg.calib))
    check_device(device), resolve_dtype(dtype), check_model_dir(model)
    with _claim(out, [model], overwrite, "attack-quantize") as claim:  # never --model, never a foreign folder
        m, tok = load_model(model, device=device, dtype=dtype)
        if texts is not None:
            common = dict(bits=cfg.bits, group=128 if cfg.group is None else (cfg.group or None), n_calib=cfg.calib_n,
                          max_len=cfg.calib_len, seed=cfg.seed)
            res = (gptq_attack(m, tok, texts, scheme=cfg.scheme or "sym", act_order=cfg.act_order, **common)
                   if cfg.backend == "gptq" else awq_attack(m, tok, texts, scheme=cfg.scheme or "asym", clip=cfg.clip, **common))
            res.record["config"]["calib"]["data"] = cfg.calib
        else:
            res = quantize_attack(m, tok, backend=cfg.backend, bits=cfg.bits, group=cfg.group, scheme=cfg.scheme or "sym",
                                  kind=cfg.kind, embeddings=cfg.embeddings, lm_head=cfg.lm_head)
        save_model(res.model, tok, claim.begin())
        _write(claim, {**res.record, "source_model": str(model)})
    return res.record


def collapse_files(target: Path, unlearned: Path, cfg: CollapseConfig, out: Path | None = None,
                   overwrite: bool = False) -> dict:
    """The collapse diagnostic of `unlearned` against `target` (docs/science.md §1b), written to `out` if given."""
    from ..models import load_model
    from .collapse import collapse_attack

    q = quantizer(cfg.backend, cfg.bits, cfg.group, cfg.scheme, cfg.kind)
    _check("cpu", target, unlearned)
    with _claim(out, [target, unlearned], overwrite, "attack-collapse") as claim:
        t, _ = load_model(target, device="cpu")
        u, _ = load_model(unlearned, device="cpu")
        rec = collapse_attack(u, None, target=t, bits=cfg.bits, group=cfg.group, scheme=cfg.scheme,
                              embeddings=cfg.embeddings, lm_head=cfg.lm_head,
                              quantizer=q if cfg.backend != "rtn" else None).record
        rec.update(target=str(target), unlearned=str(unlearned))
        _write(claim, rec)
    return rec


def relearn_files(model: Path, forget: str, cfg: RelearnConfig, retain: str | None = None, texts: str | None = None,
                  out: Path | None = None, save_model: bool = False, device: str = "auto", overwrite: bool = False) -> dict:
    """The relearning attack on `model` (docs/science.md §4): attack.json (+ the relearned model) in `out`."""
    from ..models import load_model
    from ..models import save_model as save
    from .relearn import check_forget_items, relearn_attack

    if save_model and out is None:
        raise UserError("--save-model needs --out (the folder to save the relearned model in)")
    if save_model and out.suffix == ".json":
        raise UserError(f"--save-model saves a model folder; --out {out} is a .json file", "give --out a folder")
    _check(device, model)
    f_items, r_items, t_items = _items(forget), _items(retain), _items(texts)  # bad data fails before the model loads
    check_forget_items(f_items)
    paths = [model, *(Path(x) for x in (forget, retain, texts) if x and Path(x).exists())]
    with _claim(out, paths, overwrite, "attack-relearn") as claim:
        m, tok = load_model(model, device=device)
        res = relearn_attack(m, tok, forget=f_items, fraction=cfg.fraction, steps=cfg.steps, lr=cfg.lr,
                             batch_size=cfg.batch_size, by=cfg.by, control=cfg.control, retain=r_items, texts=t_items,
                             seed=cfg.seed, fmt=bound_format(cfg, model, tok))
        if save_model:
            save(res.model, tok, claim.begin())
        _write(claim, {**res.record, "model": str(model), "forget": forget})
    return res.record


def prompts_files(model: Path, forget: str, cfg: PromptsConfig, retain: str | None = None, out: Path | None = None,
                  device: str = "auto", overwrite: bool = False) -> dict:
    """Exact-match recall of the forget set under each prompt transformation (docs/science.md §4)."""
    from ..models import load_model
    from .prompts import prompt_attack

    _check(device, model)
    items, pool = _items(forget), _items(retain)
    with _claim(out, [model, forget, retain], overwrite, "attack-prompts") as claim:
        m, tok = load_model(model, device=device)
        rec = prompt_attack(m, tok, items=items, transforms=cfg.names(), pool=pool, k=cfg.k, seed=cfg.seed,
                            fmt=bound_format(cfg, model, tok)).record
        _write(claim, {**rec, "model": str(model), "forget": forget})
    return rec


def probe_files(model: Path, forget: str, cfg: ProbeConfig, retain: str | None = None, out: Path | None = None,
                device: str = "auto", overwrite: bool = False) -> dict:
    """Logit lens on the forget set; linear probe trained on retain, applied to forget (docs/science.md §4)."""
    from ..models import load_model
    from .probes import probe_attack

    _check(device, model)
    f_items, r_items = _items(forget), _items(retain)
    with _claim(out, [model, forget, retain], overwrite, "attack-probe") as claim:
        m, tok = load_model(model, device=device)
        rec = probe_attack(m, tok, forget=f_items, retain=r_items, layers=cfg.layers, batch_size=cfg.batch_size,
                           fmt=bound_format(cfg, model, tok)).record
        _write(claim, {**rec, "model": str(model), "forget": forget, "retain": retain})
    return rec
