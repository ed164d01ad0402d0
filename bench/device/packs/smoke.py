"""The smoke mode: the same rows shrunk to tiny random models and a few dozen documents on the CPU, a
scripted teacher, and a mini copy of the data (tests/integration/test_device_smoke.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

from .common import BASE, REPO, Row

# every key is set only where the row's config dataclass has that field
SMOKE = {"steps": 2, "batch_size": 4, "max_length": 48, "target_max_length": 16, "n_negatives": 1, "cache_chunk": 0,
         "save_every": 1000, "precision": "fp32", "n": 6, "top_k": 10, "max_queries": 8, "reasoning_tokens": 6,
         "thought_tokens": 4,  # under the smoke's reasoning_tokens, as a recipe's must be
         "group": 2, "env_docs": 20, "max_passage_tokens": 16, "max_prompt_tokens": 24, "eval_limit": 3,
         "title_beams": 2, "passage_beams": 2, "batch_queries": 4, "block_size": 32, "max_blocks": 8, "layers": 2,
         "hidden": 16, "kv_heads": 1, "intermediate": 32, "token_budget": None, "dev_queries": 3,
         "augment_limit": 6, "rank_docs": 8}  # fmt: skip
ONLY_IF_SET = {"dev_queries", "augment_limit"}
SMOKE_BENCH = {
    "bench/generate.py": ["--no-http", "--device", "cpu", "--dtype", "fp32", "--prompts", "6", "--max-new-tokens", "4",
                          "--batch-sizes", "4", "--static"],
    "bench/encode.py": ["--device", "cpu", "--dtype", "fp32", "--docs", "8", "--batch-size", "4"],
}  # fmt: skip


def config_fields(row: Row) -> set[str] | None:
    from irlm import pipeline

    cls, _ = pipeline.config_class(row.kind, row.settings)
    return None if cls is None else {f.name for f in dataclasses.fields(cls)}


def shrink(row: Row) -> Row:
    row = copy.deepcopy(row)
    st = row.settings
    if row.kind == "bench":  # the models it names stay, the sizes become the smoke's
        args = st["args"]
        keep = [x for n, a in enumerate(args[:-1]) if a in ("--model", "--against") for x in args[n : n + 2]]
        st["args"] = keep + SMOKE_BENCH[st["script"]]
        return row
    if "limit" in st:
        st["limit"] = 3
    fields = config_fields(row) or set()
    for key, value in SMOKE.items():
        if key in fields and (key not in ONLY_IF_SET or key in st):
            st[key] = value
    for key in ("stage1_steps", "stage2_steps"):
        if key in fields:
            st[key] = min(int(st.get(key, 1)), 2)
    if st.get("cache_layers"):
        st["cache_layers"] = 2  # of the tiny model's 4
    if len(st.get("eval_data") or []) > 1:
        st["eval_data"] = st["eval_data"][:1]  # the same code path on one dataset
    return row


def tiny_model(folder: Path) -> str:
    """A 4-layer, 32-wide random causal Llama with SmolLM2's tokenizer (its chat template, its special tokens), tied
    embeddings like SmolLM2, so every row - teacher, retriever, pruning - runs on it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from irlm.models.resolve import resolve_model

    if (folder / "config.json").is_file():
        return str(folder)
    tok = AutoTokenizer.from_pretrained(resolve_model(BASE))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def scripted_teacher() -> None:
    """Smoke only: qgen and rerank get the test suite's scripted teacher (tests/scripts/fake_teacher.py). A random
    tiny LM never writes a valid ranking, so + rerank would have no examples; the real in-process generator
    still runs in smoke through the teacher-speed bench and the reasoning teacher."""
    import irlm.methods.drama.augment as augment

    sys.path.insert(0, str(REPO / "tests" / "scripts"))
    from fake_teacher import FakeTeacher

    real = augment.run_augment

    def run_augment(cfg, generator=None, retriever=None):
        if generator is None and cfg.strategy != "crop":
            generator = FakeTeacher(bad_every=4, hopeless_every=1000)
        return real(cfg, generator, retriever)

    augment.run_augment = run_augment


def mini_data(src: Path, dest: Path, docs: int = 24) -> Path:
    """scifact, cranfield and nq-open-oracle cut to a few dozen documents: the first judged queries of each
    split, their judged documents, then the corpus's first documents up to `docs`."""
    for name, splits in (("scifact", {"train": 14, "test": 8}), ("cranfield", {"test": 6}),
                         ("nq-open-oracle", {"train": 14, "test": 6})):  # fmt: skip
        out = dest / name
        if (out / "corpus.jsonl").is_file():
            continue
        (out / "qrels").mkdir(parents=True, exist_ok=True)
        keep_q, keep_d = set(), []
        for split, n in splits.items():
            lines = (src / name / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
            rows = [ln for ln in lines[1:] if ln.strip()]
            qids = list(dict.fromkeys(r.split("\t")[0] for r in rows))[:n]
            kept = [r for r in rows if r.split("\t")[0] in qids]
            keep_q |= set(qids)
            keep_d += [r.split("\t")[1] for r in kept]
            (out / "qrels" / f"{split}.tsv").write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
        wanted = set(keep_d)
        with open(src / name / "corpus.jsonl", encoding="utf-8") as f, open(out / "corpus.jsonl", "w") as o:
            n_other = 0
            for line in f:
                doc_id = json.loads(line)["_id"]
                if doc_id in wanted or n_other < docs - len(wanted):
                    o.write(line)
                    n_other += doc_id not in wanted
        for extra in ("queries.jsonl", "answers.jsonl"):
            if (src / name / extra).is_file():
                with open(src / name / extra, encoding="utf-8") as f, open(out / extra, "w") as o:
                    o.writelines(ln for ln in f if json.loads(ln)["_id"] in keep_q)
    return dest
