"""TOFU's models in miniature: tokenizer, base, target (fine-tuned on `full`), retrained (on `retain90`).

TOFU (Maini et al. 2024, docs/science.md §6) fine-tunes a pretrained chat LLM on all 4 000 QA pairs → target, and
on the retain split only → retrained. Here, on a CPU, in minutes:
- tokenizer: byte-level BPE trained on TOFU's own text (every split, paraphrased / perturbed answers, holdout,
  real authors, world facts) plus the pretraining corpus, so TOFU's names and vocabulary are spelled in few
  tokens (spelling a name is not knowing a fact: the same argument as models/tiny.py). The xs/s bios tokenizers
  were trained on bios text only, so they are not reused, and neither is their base.
- base: a tiny Llama pretrained from scratch on fictitious-people biographies + QA (amnesiac.data.bios, none of
  TOFU's authors) and on TOFU's real_authors and world_facts QA pairs. The last two stand in for the world
  knowledge a pretrained LLM brings: TOFU measures model utility on them, and a tiny model knows nothing unless
  taught. Every table that uses the result says so.
- target / retrained: the base fine-tuned with one recipe (AdamW, answer-only loss, cosine schedule over the
  planned epochs), checkpointed after every epoch (model + optimizer state, safetensors), so a killed run
  resumes at its last epoch. `budget_s` time-boxes each fine-tune: training stops at the end of the first
  epoch that ends past the budget, train.json records `cut_by_budget`; a later call with more budget resumes.
Cached under $AMNESIAC_HOME/models/tofu-<hash of config>/.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from ..io import amnesiac_home, hash_obj, read_json, versions, write_json


def tofu_texts(items_by_split: dict[str, list]) -> list[str]:
    """Every string of TOFU a tokenizer should cover (questions, answers, paraphrases, perturbed answers, options)."""
    out = []
    for items in items_by_split.values():
        for it in items:
            out += [it.question, it.answer, *it.paraphrased_questions, *(it.perturbed_answers or []), *it.options]
            if it.paraphrased_answer:
                out.append(it.paraphrased_answer)
    return out


def pretrain_corpus(n_people: int, seed: int) -> tuple[list[str], list[tuple[str, str]]]:
    """(texts, qa pairs) about fictitious bios people (none of them TOFU's): the base's language corpus."""
    from ..data import bios

    rng = random.Random(seed)
    g = bios.generate(n_people=10, n_pretrain_people=n_people, seed=seed + 101)  # only its pretrain people are used
    texts = [bios.biography(p, rng) for p in g["pretrain"]] + bios.filler_sentences(rng, n_people)
    qa = [(it.question, it.answer) for p in g["pretrain"] for it in bios.qa_items(p, rng)]
    return texts, qa


def encode_qa(tok, pairs: list[tuple[str, str]], template: str | None = None):
    """Answer-only training examples in the QA template (data.prompt; None: the default)."""
    from ..core.logprobs import encode_pairs
    from ..data.schema import QA_TEMPLATE, qa_answer, qa_prompt

    t = template or QA_TEMPLATE
    return encode_pairs(tok, [qa_prompt(q, t) for q, _ in pairs], [qa_answer(a) + tok.eos_token for _, a in pairs])


def encode_text(tok, texts: list[str]):
    from ..core.logprobs import encode_pairs

    return encode_pairs(tok, [""] * len(texts), [t + tok.eos_token for t in texts])


# ----------------------------------------------------------------------------- resumable fine-tuning

def _batches(examples, batch_size: int, seed: int) -> list[list[int]]:
    """One epoch's batches: shuffled, length-bucketed inside chunks of 50 batches, batch order shuffled."""
    rng = random.Random(seed)
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    out = []
    for c in range(0, len(idx), batch_size * 50):
        part = sorted(idx[c: c + batch_size * 50], key=lambda i: len(examples[i][0]))
        out += [part[b: b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


def _save_state(ckpt: Path, model, tok, opt, state: dict) -> None:
    from safetensors.torch import save_file

    from ..models.load import save_model

    save_model(model, tok, ckpt / "model")
    params = [p for g in opt.param_groups for p in g["params"]]
    flat = {}
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            flat[f"{i}.{k}"] = v.detach().cpu().contiguous().reshape(-1) if v.dim() == 0 else v.detach().cpu().contiguous()
    tmp = ckpt / "optim.safetensors.tmp"
    save_file(flat, str(tmp))
    tmp.replace(ckpt / "optim.safetensors")
    write_json(ckpt / "state.json", state)  # written last: a checkpoint counts once state.json names its epoch


def _load_optim(ckpt: Path, opt) -> None:
    from safetensors.torch import load_file

    flat = load_file(str(ckpt / "optim.safetensors"))
    params = [p for g in opt.param_groups for p in g["params"]]
    for key, v in flat.items():
        i, k = key.split(".", 1)
        p = params[int(i)]
        opt.state.setdefault(p, {})[k] = v.reshape(()) if k == "step" else v.to(p.device)


def finetune(start: Path, examples, out: Path, epochs: int, lr: float, batch_size: int, seed: int,
             budget_s: float | None = None, warmup: int = 20, log=print, desc: str = "finetune",
             extra: dict | None = None) -> dict:
    """Fine-tune the model at `start` on `examples` ((ids, start) pairs) into `out` (module doc). Returns train.json."""
    from ..models.load import load_model, save_model
    from ..models.train import lm_loss, lr_at
    from ..core.logprobs import collate

    done = out / "train.json"
    if done.exists():
        info = read_json(done)
        if info["epochs_done"] >= epochs or (budget_s is not None and info["elapsed_s"] >= budget_s):
            return info
    ckpt = out / "checkpoint"
    resumed = (ckpt / "state.json").exists()
    model, tok = load_model(ckpt / "model" if resumed else start, device="cpu")
    state = read_json(ckpt / "state.json") if resumed else {"epochs_done": 0, "step": 0, "elapsed_s": 0.0, "log": []}
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    if resumed:
        _load_optim(ckpt, opt)
        log(f"[tofu] {desc}: resuming after epoch {state['epochs_done']}")
    total = epochs * math.ceil(len(examples) / batch_size)
    model.train()
    cut = False
    while state["epochs_done"] < epochs:
        if budget_s is not None and state["elapsed_s"] >= budget_s:
            cut = True
            break
        t0, losses = time.time(), []
        for b in _batches(examples, batch_size, seed * 1000 + state["epochs_done"]):
            for g in opt.param_groups:
                g["lr"] = lr_at(state["step"], total, lr, warmup, "cosine")
            enc = collate([examples[i] for i in b], tok.pad_token_id)
            loss = lm_loss(model, enc)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at step {state['step']}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            state["step"] += 1
        state["epochs_done"] += 1
        state["elapsed_s"] = state["elapsed_s"] + time.time() - t0
        state["log"].append({"epoch": state["epochs_done"], "loss": round(sum(losses) / len(losses), 4),
                             "elapsed_s": round(state["elapsed_s"], 1)})
        log(f"[tofu] {desc}: epoch {state['epochs_done']}/{epochs}, loss {state['log'][-1]['loss']:.3f}, "
            f"{state['elapsed_s']:.0f} s")
        model.eval()
        _save_state(ckpt, model, tok, opt, state)
        model.train()
    model.eval()
    save_model(model, tok, out)
    info = {"model": desc, **state, "epochs_planned": epochs, "cut_by_budget": cut or state["epochs_done"] < epochs,
            "budget_s": budget_s, "lr": lr, "batch_size": batch_size, "seed": seed, "n_examples": len(examples),
            "n_params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
            "versions": versions(), **(extra or {})}
    write_json(done, info)
    return info


# ----------------------------------------------------------------------------- the three models

def models_dir(cfg: dict) -> Path:
    from ..models.tokenizer import TOKENIZER_VERSION

    return amnesiac_home() / "models" / f"tofu-{hash_obj({**cfg, 'tokenizer': TOKENIZER_VERSION}, 10)}"


def prepare_tofu(cfg: dict, data: dict[str, list], budget_s: float | None = None, log=print) -> dict[str, Path]:
    """Tokenizer, base, target and retrained for the model part of a TofuConfig (`cfg`: arch, vocab, recipe,
    seed, data sizes; it names the cache folder). `data`: full, retain90, real_authors, world_facts (+ any split
    the tokenizer should see). `budget_s`: time box of each of target and retrained (not part of the cache key)."""
    from ..models.load import load_tokenizer, save_model
    from ..models.tiny import build_llama
    from ..models.tokenizer import train_tokenizer

    root = models_dir(cfg)
    paths = {"base": root / "base", "target": root / "target", "retrained": root / "retrained"}
    seed = cfg["seed"]
    tok_dir = root / "tokenizer"
    texts, bios_qa = pretrain_corpus(cfg["pretrain_people"], seed)
    world = [(it.question, it.answer) for s in ("real_authors", "world_facts") for it in data[s]]
    if not (tok_dir / "tokenizer.json").exists():
        corpus = tofu_texts(data) + texts + [f"{q} {a}" for q, a in bios_qa]
        train_tokenizer(corpus, vocab_size=cfg["vocab"], out=tok_dir)
    tok = load_tokenizer(tok_dir)
    if not (paths["base"] / "train.json").exists():
        log(f"[tofu] base: pretraining on {len(texts)} bios texts, {len(bios_qa)} bios QA, {len(world)} real-world QA")
        torch.manual_seed(seed)
        save_model(build_llama(cfg["arch"], tok), tok, root / "init")
        ex = encode_text(tok, texts) + encode_qa(tok, bios_qa, cfg.get("template")) + encode_qa(tok, world, cfg.get("template"))
        finetune(root / "init", ex, paths["base"], cfg["base_epochs"], cfg["base_lr"], cfg["batch_size"], seed,
                 None, log=log, desc="base", extra={"corpus": {"bios_texts": len(texts), "bios_qa": len(bios_qa),
                                                                "real_world_qa": len(world)}})
    for name, split in (("target", "full"), ("retrained", "retain90")):
        pairs = [(it.question, it.answer) for it in data[split]]
        finetune(paths["base"], encode_qa(tok, pairs, cfg.get("template")), paths[name], cfg["ft_epochs"], cfg["ft_lr"], cfg["batch_size"],
                 seed + 1, budget_s, log=log, desc=name, extra={"split": split})
    return paths
