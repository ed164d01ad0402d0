"""Think-then-embed retrievers (LREM, Search-R3; METHODS.md §4-5): rewards, keyword condensing, GRPO."""
