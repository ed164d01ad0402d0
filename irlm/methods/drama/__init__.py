"""DRAMA (Ma et al., ACL 2025): LLM data augmentation and pruned LLM backbones (METHODS.md §2)."""
