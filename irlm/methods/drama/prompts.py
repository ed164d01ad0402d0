"""Teacher prompts. Change the wording -> bump PROMPT_VERSION: every example records the version it came from."""

from __future__ import annotations

PROMPT_VERSION = "drama-v2"  # v2: prefilled answers ("Question:", "[", '{"query": "'): v1 drew preambles


def _words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def qgen_prompt(passage: str, words: int = 200) -> list[dict]:
    """Synthetic query generation (paper §2, augmentation 2). The assistant turn is prefilled: SmolLM2-135M
    asked for "a search query" mostly answered "The passage is:"; asked for a question after this prefill,
    it wrote one for 5 of 6 scifact passages."""
    return [{"role": "user", "content": f"Passage: {_words(passage, words)}\n\n"
                                        "Write a short question that this passage answers."},
            {"role": "assistant", "content": "Question:"}]  # fmt: skip


def rerank_prompt(query: str, passages: list[str], words: int = 60) -> list[dict]:
    """Listwise reranking (paper §2, augmentation 3): identifiers [1]..[n], answer `[2] > [1] > ...`.
    The reply is prefilled with "[", so the parser sees "[" + the generated text."""
    listing = "\n".join(f"[{i}] {_words(p, words)}" for i, p in enumerate(passages, 1))
    return [{"role": "user", "content": (
        f"Rank the {len(passages)} passages below by how well they answer the search query.\n\n"
        f"Query: {query}\n\n{listing}\n\n"
        f"Query: {query}\n"
        "Answer with all identifiers from most to least relevant, in the form [2] > [1] > [3], "
        "and nothing else.")},
            {"role": "assistant", "content": "["}]  # fmt: skip


TRIPLET_PREFILL = '{"query": "'


def triplet_prompt(passage: str, words: int = 200) -> list[dict]:
    """Synthetic triplets (paper §2, augmentation 4): the teacher writes all three texts. The reply is
    prefilled with the JSON's opening, so the parser sees TRIPLET_PREFILL + the generated text."""
    return [{"role": "user", "content": (
        "Here is a passage that sets a topic:\n\n"
        f"{_words(passage, words)}\n\n"
        "Write a search query on this topic, a passage that answers it, and a passage that looks related "
        "but does not answer it. Reply with JSON only: "
        '{"query": "...", "positive": "...", "negative": "..."}')},
            {"role": "assistant", "content": TRIPLET_PREFILL}]  # fmt: skip
