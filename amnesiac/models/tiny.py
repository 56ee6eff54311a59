"""Tiny Llama models built the way TOFU/MUSE build theirs, in miniature (`amnesiac prepare`).

base      : LlamaForCausalLM pretrained from scratch on biographies + QA of *other* fictitious
            people and filler text (knows format and vocabulary, none of the benchmark's people);
target    : base fine-tuned on biographies + QA of forget ∪ retain (bios `full`);
retrained : base fine-tuned on retain only with the same recipe (the gold "never saw it" model).
Cached under $AMNESIAC_HOME/models/<hash of config>/; a second call returns at once.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import bios
from ..data.schema import QA_TEMPLATE, qa_answer, qa_prompt
from ..io import amnesiac_home, hash_obj, read_json, versions, write_json
from .tokenizer import TOKENIZER_VERSION

SIZES = {
    "xs": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, vocab=2048),
    "s": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8, vocab=4096),
    "m": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8, vocab=4096),
}
# Benchmark people per size. Measured on 2 CPU cores: the xs model needs ~40 passes to memorise 300
# random facts (50 people × 6) but had not passed 25 % recall on 600 facts after 45 passes, so the
# laptop default is 50 people; larger presets take more (unmeasured here: check train.json).
PEOPLE = {"xs": 50, "s": 200, "m": 200}
# Fine-tuning runs "to criterion": in rounds of `check_every` epochs until exact-match recall on the
# model's own training questions reaches `criterion` (or `max_epochs`), since how many passes a tiny
# model needs to memorise random facts is not known in advance. The rounds and recalls go to train.json.
RECIPES = {
    "xs": dict(base_epochs=2.0, base_lr=3e-3, ft_lr=3e-3, renders=1, batch_size=16, base_batch_size=32, check_every=5,
               max_epochs=80, criterion=0.95, ft_schedule="cosine"),
    "s": dict(base_epochs=2.0, base_lr=2e-3, ft_lr=2e-3, renders=1, batch_size=16, base_batch_size=32, check_every=5,
              max_epochs=120, criterion=0.97),
    "m": dict(base_epochs=2.0, base_lr=1e-3, ft_lr=1e-3, renders=1, batch_size=16, base_batch_size=32, check_every=5,
              max_epochs=120, criterion=0.97),
}


@dataclass
class PrepareConfig:
    """What `amnesiac prepare` builds: the tiny model preset and the seed of its data, init and training."""
    size: str = "xs"  # tiny model size preset: xs | s | m
    seed: int = 0  # seed for data, init and training order

    def __post_init__(self) -> None:
        from ..errors import check_choice

        check_choice("--size", self.size, list(SIZES))


def default_config(size: str = "xs", seed: int = 0, n_people: int | None = None, n_pretrain_people: int = 1000,
                   forget: str = "forget10", template: str | None = None) -> dict:
    """The tiny models' recipe; `template`: the QA prompt template they are trained with (data.prompt; part of the
    config, and so of the cache key, only when it is not the default)."""
    if size not in SIZES:
        from ..errors import UserError

        raise UserError(f"unknown size {size!r}; available: {', '.join(SIZES)}")
    n_people = PEOPLE[size] if n_people is None else n_people
    cfg = {"size": size, "arch": SIZES[size], "recipe": RECIPES[size], "seed": seed,
           "bios": {"n_people": n_people, "n_pretrain_people": n_pretrain_people, "seed": seed},
           "forget": forget, "n_filler": n_pretrain_people, "tokenizer": TOKENIZER_VERSION}
    if template is not None and template != QA_TEMPLATE:
        from ..data.prompt import PromptFormat

        cfg["template"] = PromptFormat(template).template  # checked: {question} and nothing else
    return cfg


BASE_KEYS = ("base_epochs", "base_lr", "base_batch_size")


def base_config(cfg: dict) -> dict:
    """What the tokenizer and base model depend on (not the fine-tuning recipe): they are shared by
    every target/retrained pair built on them."""
    return {**{k: v for k, v in cfg.items() if k not in ("recipe", "forget")},
            "recipe": {k: cfg["recipe"][k] for k in BASE_KEYS}}


def model_dir(cfg: dict) -> Path:
    return amnesiac_home() / "models" / f"tiny-{cfg['size']}-{hash_obj(base_config(cfg), 10)}"


def model_paths(cfg: dict) -> dict[str, Path]:
    root, ft = model_dir(cfg), hash_obj(cfg, 8)
    return {"base": root / "base", "target": root / f"target-{ft}", "retrained": root / f"retrained-{ft}"}


def _qa_example(tok, question: str, answer: str, template: str = QA_TEMPLATE):
    from ..core.logprobs import encode_pairs

    return encode_pairs(tok, [qa_prompt(question, template)], [qa_answer(answer) + tok.eos_token])[0]


def _text_example(tok, text: str):
    from ..core.logprobs import encode_pairs

    return encode_pairs(tok, [""], [text + tok.eos_token])[0]


def build_llama(arch: dict, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=arch["hidden_size"], intermediate_size=arch["intermediate_size"],
                      num_hidden_layers=arch["num_hidden_layers"], num_attention_heads=arch["num_attention_heads"],
                      num_key_value_heads=arch["num_attention_heads"], max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    from ..core import threads

    model = LlamaForCausalLM(cfg)
    threads.configure(model)
    return model


def _people_examples(tok, people, rng, renders: int, qa: bool, all_questions: bool, template: str = QA_TEMPLATE):
    ex = []
    for p in people:
        for _ in range(renders):
            ex.append(_text_example(tok, bios.biography(p, rng)))
        if qa:
            for it in bios.qa_items(p, rng):
                qs = [it.question] + (it.paraphrased_questions if all_questions else [])
                ex += [_qa_example(tok, q, it.answer, template) for q in qs]
    return ex


def exact_match_recall(model, tok, items, batch_size: int = 32, template: str = QA_TEMPLATE) -> float:
    """Share of items whose greedy answer (≤ 16 tokens, first line) matches exactly: the training criterion
    (the same computation as metrics.qa.exact_match_recall, without importing the metrics layer)."""
    from ..core import generate_greedy
    from ..data.answers import exact_match
    from ..data.schema import item_prompt

    outs = generate_greedy(model, tok, [item_prompt(it, template) for it in items], max_new_tokens=16, stop_strings=["\n"],
                           batch_size=batch_size)
    return float(sum(exact_match(o, it.answer) for o, it in zip(outs, items)) / max(1, len(items)))


def prepare(size: str = "xs", seed: int = 0, force: bool = False, log=print, **kw) -> dict[str, Path]:
    """Build (or reuse) tokenizer, base, target and retrained models. Returns their paths."""
    import torch

    from ..data.sources import build_bios
    from ..data import load_qa_jsonl
    from .load import load_tokenizer, save_model
    from .train import train_lm, weight_stats

    cfg = default_config(size, seed, **kw)
    root = model_dir(cfg)
    paths = model_paths(cfg)
    if not force and all((p / "train.json").exists() for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    g = bios.generate(**cfg["bios"])
    data_dir = build_bios(cfg["bios"])
    rng = random.Random(seed)
    rec = cfg["recipe"]
    template = cfg.get("template", QA_TEMPLATE)
    threads = torch.get_num_threads()

    # Tokenizer: trained on the pretraining corpus + the benchmark's own text (a tokenizer that
    # can spell the names is not knowledge of the facts).
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        from .tokenizer import train_tokenizer

        corpus = [bios.biography(p, rng) for p in g["pretrain"] + g["people"] + g["holdout"]]
        corpus += [it.question + " " + it.paraphrased_answer for p in g["pretrain"][:500] for it in bios.qa_items(p, rng)]
        corpus += bios.filler_sentences(rng, 2000)
        train_tokenizer(corpus, vocab_size=cfg["arch"]["vocab"], out=tok_dir)
    tok = load_tokenizer(tok_dir)

    def finish(name, model, log_rows, t0, extra):
        save_model(model, tok, paths[name])
        write_json(paths[name] / "train.json", {
            "model": name, "config": cfg, "seed": seed, "versions": versions(), "threads": threads,
            "wall_s": round(time.time() - t0, 2), "steps": log_rows, "weight_stats": weight_stats(model),
            "n_params": sum(p.numel() for p in model.parameters()), **extra})

    if force or not (paths["base"] / "train.json").exists():
        t0 = time.time()
        log(f"[prepare] base: pretraining on {len(g['pretrain'])} other people + filler")
        ex = _people_examples(tok, g["pretrain"], rng, renders=1, qa=True, all_questions=True, template=template)
        ex += [_text_example(tok, s) for s in bios.filler_sentences(rng, cfg["n_filler"])]
        model = build_llama(cfg["arch"], tok)
        steps = train_lm(model, ex, tok.pad_token_id, epochs=rec["base_epochs"], lr=rec["base_lr"],
                         batch_size=rec["base_batch_size"], seed=seed, desc="base")
        finish("base", model, steps, t0, {"n_examples": len(ex)})

    forget_n = len({it.person for it in load_qa_jsonl(data_dir / f"{cfg['forget']}.jsonl")})
    members = {"target": g["people"], "retrained": g["people"][: len(g["people"]) - forget_n]}
    from transformers import AutoModelForCausalLM

    for name, people in members.items():
        if not force and (paths[name] / "train.json").exists():
            continue
        t0 = time.time()
        log(f"[prepare] {name}: fine-tuning base on {len(people)} people")
        ex = _people_examples(tok, people, random.Random(seed + 7), renders=rec["renders"], qa=True, all_questions=False,
                              template=template)
        model = AutoModelForCausalLM.from_pretrained(str(paths["base"]), dtype=torch.float32)
        train_items = [it for p in people for it in bios.qa_items(p, random.Random(0))]
        rounds: list[dict] = []

        def check(ep: int) -> bool:  # every `check_every` epochs: recall on the training questions
            if ep % rec["check_every"]:
                return False
            r = exact_match_recall(model, tok, train_items, template=template)
            model.train()
            rounds.append({"epochs": ep, "train_recall": r, "t": round(time.time() - t0, 1)})
            log(f"[prepare] {name}: {ep} epochs, recall on its training questions {r:.3f}")
            return r >= rec["criterion"]

        steps = train_lm(model, ex, tok.pad_token_id, epochs=rec["max_epochs"], lr=rec["ft_lr"],
                         batch_size=rec["batch_size"], seed=seed + 1, desc=name, warmup=20,
                         schedule=rec.get("ft_schedule", "constant"), on_epoch=check, per_example=True)
        epochs = rounds[-1]["epochs"] if rounds else rec["max_epochs"]
        recall = {}
        for split in (cfg["forget"], "retain" + str(100 - int(cfg["forget"][-2:]))):
            items = load_qa_jsonl(data_dir / f"{split}.jsonl")
            recall[split] = exact_match_recall(model, tok, items, template=template)
        log(f"[prepare] {name}: exact-match recall {recall}")
        finish(name, model, steps, t0, {"n_examples": len(ex), "recall": recall, "n_people": len(people),
                                         "rounds": rounds, "epochs": epochs,
                                         "chance_rates": bios.chance_rates()})
    return paths


def prepared_summary(paths: dict[str, Path]) -> dict[str, dict]:
    return {k: read_json(p / "train.json") for k, p in paths.items()}
