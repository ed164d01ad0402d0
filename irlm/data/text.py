"""Plain text for language modelling: dataset corpora, text folders or JSONL files, packed into blocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from irlm.errors import InputError


def iter_texts(sources: list[str]) -> Iterator[str]:
    """Texts from each source: a dataset name or BEIR folder (its corpus), a .txt/.md folder or file
    (one document per file), or a JSONL file (its `text` field, with `title` in front when present)."""
    from irlm.data import load_dataset
    from irlm.data.beir import iter_jsonl

    for src in sources:
        path = Path(src)
        if path.is_file() and path.suffix == ".jsonl":
            for lineno, obj in iter_jsonl(path):
                if not isinstance(obj.get("text"), str):
                    raise InputError("is missing or not a string", path, lineno, "text")
                yield f"{obj['title']} {obj['text']}" if obj.get("title") else obj["text"]
        elif path.is_file() or (path.is_dir() and not (path / "corpus.jsonl").exists()):
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md"))
            if not files:
                raise InputError("no .txt or .md files", path)
            yield from (f.read_text(encoding="utf-8", errors="replace") for f in files)
        else:
            yield from load_dataset(src).corpus.texts()


def pack_blocks(texts, tokenizer, block_size: int, max_blocks: int | None = None) -> list[list[int]]:
    """Texts tokenised, joined by EOS and cut into full blocks of `block_size` tokens (the last partial
    block is dropped): every position is a training target, no padding is wasted."""
    eos = tokenizer.eos_token_id
    blocks, buf = [], []
    for text in texts:
        buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])
        while len(buf) >= block_size:
            blocks.append(buf[:block_size])
            buf = buf[block_size:]
            if max_blocks and len(blocks) >= max_blocks:
                return blocks
    return blocks
