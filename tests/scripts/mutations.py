"""Apply one-line changes that break a method's maths, run the tests that should catch each, report.

    .venv/bin/python tests/scripts/mutations.py            # every mutation
    .venv/bin/python tests/scripts/mutations.py -k resume  # those whose name contains "resume"
    .venv/bin/python tests/scripts/mutations.py -k "prf|prune"  # several: separated by |

Each mutation is made in a scratch copy of irlm/ and tests/, never in the checkout, so the check is safe
to run while others work in it and leaves nothing to restore if it is killed. The unmutated copy runs
the same tests first: a test that fails without any change cannot be said to catch one. Exit status 1
when any mutation goes uncaught (or the baseline fails).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Mutation:
    name: str
    file: str
    old: str  # must occur exactly once in the file
    new: str
    tests: list[str]  # pytest node ids that should fail under the change


REASONING = "tests/integration/test_reasoning.py"
MUTATIONS = [
    Mutation("GRPO advantage sign flipped", "irlm/methods/reasoning/tasks.py",
             "ro.adv = group_advantages(", "ro.adv = -group_advantages(",
             [f"{REASONING}::test_one_grpo_step_raises_the_better_samples_probability"]),
    Mutation("GRPO rewards grouped across queries", "irlm/methods/reasoning/tasks.py",
             "reward.view(len(ro.examples), self.group)", "reward.view(self.group, len(ro.examples))",
             [f"{REASONING}::test_rewards_are_normalised_within_each_querys_group"]),
    Mutation("resume leaves the global RNG alone", "irlm/train/loop.py",
             "        _set_rng_state(json.loads((folder / \"rng.json\").read_text()))\n", "",
             ["tests/integration/test_train_loop.py::test_resume_restores_the_global_rng"]),
    Mutation("Self-Retrieval tau and delta swapped", "irlm/methods/selfretrieval/decode.py",
             "tau: float, delta: float", "delta: float, tau: float",
             ["tests/integration/test_selfretrieval.py::test_tau_scales_retrieval_and_delta_the_assessment"]),
    Mutation("hard-concrete eval gate divides by beta", "irlm/methods/drama/prune.py",
             "s = torch.sigmoid(self.log_alpha)\n", "s = torch.sigmoid(self.log_alpha / BETA)\n",
             ["tests/unit/test_prune_masks.py::test_eval_gate_away_from_saturation"]),
    # the slips of issue 17, each fix undone in one line
    Mutation("length reward pays a thought never closed", "irlm/methods/reasoning/tasks.py",
             "return 0.0 if n_tokens is None else", "return 1.0 if n_tokens is None else",
             [f"{REASONING}::test_a_thought_stopped_at_end_of_text_earns_no_length_reward"]),
    Mutation("reasoning schedule back to linear", "irlm/methods/reasoning/config.py",
             'schedule: str = "cosine"', 'schedule: str = "linear"',
             [f"{REASONING}::test_reasoning_lr_follows_a_cosine_after_warm_up"]),
    Mutation("cosine schedule decays linearly", "irlm/train/loop.py",
             "SCHEDULES = {\"linear\": linear_warmup, \"cosine\": cosine_warmup}",
             "SCHEDULES = {\"linear\": linear_warmup, \"cosine\": linear_warmup}",
             ["tests/integration/test_train_loop.py::test_the_trainer_uses_the_configured_schedule"]),
    Mutation("GRPO log-probabilities ignore the sampling temperature", "irlm/methods/reasoning/model.py",
             ".float() / temperature, dim=-1)", ".float(), dim=-1)",
             [f"{REASONING}::test_grpo_logprobs_are_those_of_the_sampling_distribution"]),
    Mutation("GRPO sampling reseeds the global RNG", "irlm/methods/reasoning/tasks.py",
             "with torch.random.fork_rng(devices=devices):", "if devices is not None:",
             [f"{REASONING}::test_grpo_sampling_leaves_the_global_rng_alone"]),
    Mutation("epoch permutation seeded with seed + epoch", "irlm/train/loop.py",
             "perm = _permutation(n, epoch_seed(seed, epoch))", "perm = _permutation(n, seed + epoch)",
             ["tests/integration/test_train_loop.py::test_neighbouring_seeds_share_no_epoch"]),
    Mutation("torn reasoning row kept on resume", "irlm/methods/reasoning/train.py",
             "    drop_torn_line(out)\n", "",
             [f"{REASONING}::test_a_torn_last_line_of_the_reasoning_file_is_redone"]),
    Mutation("reasoning InfoNCE without the cross-process gather", "irlm/methods/reasoning/tasks.py",
             "return info_nce_from_embeddings(q, d, temperature)",
             "return info_nce_from_embeddings(q, d, temperature, gather=False)",
             [f"{REASONING}::test_reasoning_infonce_sees_every_processs_documents"]),
    # pruning exports what it trained (issue 17, item 2)
    Mutation("pruning ends without hardening", "irlm/methods/drama/prune.py",
             "target_warmup: float = 0.5, harden: float = 0.2", "target_warmup: float = 0.5, harden: float = 0.0",
             ["tests/integration/test_prune.py::test_pruning_exports_what_it_trained"]),
    Mutation("export drops the kept gate values", "irlm/methods/drama/export.py",
             "(gates or ones_like_gates(cfg))", "(ones_like_gates(cfg))",
             ["tests/integration/test_prune.py::test_export_folds_the_kept_gate_values"]),
    Mutation("tied head not unfolded through the final norm", "irlm/methods/drama/export.py",
             "if _tied(cfg) else torch.ones_like(z_h)", "if False else torch.ones_like(z_h)",
             ["tests/integration/test_prune.py::test_export_folds_the_kept_gate_values"]),
    Mutation("prune config's hardening not passed to the task", "irlm/methods/drama/pretrain.py",
             "harden=cfg.harden, ", "",
             ["tests/integration/test_prune.py::test_the_prune_config_reaches_the_task"]),
    Mutation("parameter count never constrained", "irlm/methods/drama/prune.py",
             "        if constrain_params:\n", "        if False:\n",
             ["tests/integration/test_prune.py::test_the_parameter_count_is_constrained_when_asked"]),
    Mutation("resumed prune run forgets the soft model's loss", "irlm/methods/drama/prune.py",
             "if harden > 0 and self.probe_file and self.probe_file.is_file():", "if False:",
             ["tests/integration/test_prune.py::test_every_prune_run_reports_the_export_gap"]),
    # the keyword teacher without an LLM (issue 17, item 4)
    Mutation("PRF term weights without idf", "irlm/methods/reasoning/prf.py",
             "self.idf[key] * tf * (K1 + 1)", "tf * (K1 + 1)",
             ["tests/unit/test_reasoning_prf.py::test_positive_feedback_weighs_the_positives_words_by_bm25"]),
    Mutation("PRF keywords lightest first", "irlm/methods/reasoning/prf.py",
             "key=lambda word: (-w[word], order[word])", "key=lambda word: (w[word], order[word])",
             ["tests/unit/test_reasoning_prf.py::test_bm25_feedback_takes_bm25s_top_documents"]),
    Mutation("frozen parameters moved by momentum across processes", "irlm/train/loop.py",
             "p.grad = g.view_as(p).clone() if n else None", "p.grad = g.view_as(p).clone()",
             ["tests/integration/test_train_loop.py::test_a_parameter_without_gradient_stays_put_across_processes"]),
]  # fmt: skip


# The core battery (issue 35): each mutation runs against every test file of the package it lives in,
# not one node, so a test written for something else may catch it too.
LOSSES = ["tests/unit/test_contrastive_loss.py", "tests/unit/test_grpo.py", "tests/integration/test_anchor.py"]
TRAIN = ["tests/unit/test_contrastive_loss.py", "tests/integration/test_cached.py",
         "tests/integration/test_train_loop.py"]
MODELS = ["tests/unit/test_pooling.py", "tests/integration/test_encoder.py"]
EVAL = ["tests/unit/test_metrics.py", "tests/integration/test_retrievers.py"]
INDEX = ["tests/unit/test_bm25_index.py", "tests/unit/test_fusion.py", "tests/unit/test_dense_index.py",
         "tests/integration/test_bm25_scifact.py"]
CORE = [
    Mutation("InfoNCE target ignores the hard negatives", "irlm/losses/contrastive.py",
             "torch.arange(q.shape[0], device=q.device) * group", "torch.arange(q.shape[0], device=q.device)", LOSSES),
    Mutation("InfoNCE target offset of the other processes dropped", "irlm/losses/contrastive.py",
             "offset = dist.get_rank() * d.shape[0]", "offset = 0", LOSSES + TRAIN),
    Mutation("last-token index counts the mask (wrong under left padding)", "irlm/models/pooling.py",
             "return (mask.long() * positions).argmax(dim=1)", "return mask.long().sum(dim=1) - 1", MODELS),
    Mutation("query and passage prefixes swapped in training", "irlm/train/contrastive.py",
             "encoder.tokenize([cfg.query_prefix + ex.query", "encoder.tokenize([cfg.passage_prefix + ex.query", TRAIN),
    Mutation("metric cut-off one deeper", "irlm/eval/metrics.py",
             "cuts[TREC[name]].add(int(k))", "cuts[TREC[name]].add(int(k) + 1)", EVAL),
    Mutation("reconstruction targets not shifted", "irlm/losses/reconstruction.py",
             "get_input_embeddings()(target_ids[:, :-1])", "get_input_embeddings()(target_ids[:, 1:])", LOSSES),
    Mutation("DCG discount off by one rank", "irlm/methods/reasoning/rewards.py",
             "g / math.log2(r + 1)", "g / math.log2(r + 2)", ["tests/unit/test_reasoning_rewards.py"]),
    Mutation("BM25 k1 and b at the Okapi defaults", "irlm/index/bm25.py",
             "k1: float = 0.9, b: float = 0.4", "k1: float = 1.2, b: float = 0.75", INDEX),
    Mutation("activation-cache key ignores the frozen weights' values", "irlm/train/cached.py",
             "            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())\n", "", TRAIN),
    Mutation("activation-cache key ignores the stored dtype", "irlm/train/cached.py",
             'f"{layers}:{dtype}:{type(dec).__name__}"', 'f"{layers}:{type(dec).__name__}"', TRAIN),
    Mutation("min-max fusion divides by the top score, not the span", "irlm/index/fusion.py",
             "(1 - LOWEST) * (s - lo) / (hi - lo)", "(1 - LOWEST) * (s - lo) / hi", INDEX),
    Mutation("live index replaced by two renames where one atomic swap is possible", "irlm/utils.py",
             "    elif not _exchange(tmp, path):\n", "    elif True:\n",
             ["tests/unit/test_runs_atomic.py", "tests/integration/test_serve_documents.py"]),
    Mutation("a trie step does not advance the depth", "irlm/index/trie.py",
             "key=at), depth + 1)", "key=at), depth)",
             ["tests/unit/test_trie.py", "tests/integration/test_selfretrieval.py"]),
    # anchor's paper settings (issue 34)
    Mutation("anchor token prefix left at norm 1", "irlm/methods/anchor/train.py",
             "return unit * token_norm if scale == \"token\" else unit", "return unit", ["tests/integration/test_anchor.py"]),
    Mutation("anchor trainer drops prefix_scale", "irlm/methods/anchor/train.py",
             "cfg.target_max_length, cfg.prefix_scale)", "cfg.target_max_length)", ["tests/integration/test_anchor.py"]),
    Mutation("EOS pooling without the end token", "irlm/models/encoder.py",
             'eos = cfg.append_eos or cfg.pooling == "eos"', "eos = cfg.append_eos", ["tests/integration/test_anchor.py"]),
]  # the core battery ends here
MUTATIONS += CORE

# rewards that cannot be gamed and GRPO as DeepSeekMath runs it (issue 32), each against every reasoning test file
REASONING_FILES = ["tests/unit/test_rl_env.py", "tests/unit/test_grpo.py", "tests/unit/test_reasoning_rewards.py",
                   "tests/unit/test_reasoning_prf.py", REASONING]
MUTATIONS += [
    Mutation("GRPO ratio from the current log-probs", "irlm/methods/reasoning/tasks.py",
             "        return ro.old[part, :width]\n", "        return logp.detach()\n", REASONING_FILES),
    Mutation("GRPO KL sign flipped", "irlm/losses/grpo.py",
             "return policy + kl_coef * kl, parts", "return policy - kl_coef * kl, parts", REASONING_FILES),
    Mutation("rank ties counted for the positive", "irlm/methods/reasoning/rewards.py",
             "return (scores >= own[:, None]).sum(axis=1).tolist()",
             "return (1 + (scores > own[:, None]).sum(axis=1)).tolist()", REASONING_FILES),
    Mutation("unclosed samples paid the rank term", "irlm/methods/reasoning/tasks.py",
             "r if ok or self.pay_unclosed else None", "r", REASONING_FILES),
]  # fmt: skip


# Self-Retrieval as the paper scores it (issue 31), each against every Self-Retrieval test file
SELFRETRIEVAL_FILES = ["tests/integration/test_selfretrieval.py", "tests/integration/test_selfretrieval_scoring.py",
                       "tests/integration/test_selfretrieval_fast.py"]
MUTATIONS += [
    Mutation("Self-Retrieval verdict inverted", "irlm/methods/selfretrieval/decode.py",
             "return torch.softmax(last, dim=-1)[:, 1].tolist()", "return torch.softmax(last, dim=-1)[:, 0].tolist()",
             SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval tau and delta swapped by the retriever", "irlm/methods/selfretrieval/retriever.py",
             "self.cfg.tau, self.cfg.delta", "self.cfg.delta, self.cfg.tau", SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval joint probability in place of the title's", "irlm/methods/selfretrieval/decode.py",
             "[c.title_logprob for c in cands] if scoring", "[c.logprob for c in cands] if scoring",
             SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval title factor dropped", "irlm/methods/selfretrieval/decode.py",
             "scores = torch.softmax(probs / tau, dim=0)", "scores = torch.ones_like(probs)", SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval cached passage scores read one position late", "irlm/methods/selfretrieval/fast.py",
             "(r, start - 1 + i)", "(r, start + i)", SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval cached beams all start from the prompt", "irlm/methods/selfretrieval/fast.py",
             "    scores[0] = 0.0  # the other", "    scores[:] = 0.0  # the other", SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval scored without assessment keeps the verdicts", "irlm/methods/selfretrieval/train.py",
             "bare = [replace(c, reject=None) for c in cands]", "bare = cands", SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval cached passages run whole without verdicts", "irlm/methods/selfretrieval/fast.py",
             "title + p + assess if assess else title + p[:n]", "title + p + (assess or [])", SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval cached passages cut one token short", "irlm/methods/selfretrieval/fast.py",
             "title + p + assess if assess else title + p[:n]", "title + p + assess if assess else title + p[:n - 1]",
             SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval greedy title leaves out the stop's score", "irlm/methods/selfretrieval/decode.py",
             "for t, token in enumerate(seq))", "for t, token in enumerate(seq[:-1]))", SELFRETRIEVAL_FILES),
    Mutation("Self-Retrieval greedy title scored on logits", "irlm/methods/selfretrieval/decode.py",
             "procs = ([LogSoftmax()] if beams == 1 else [])", "procs = ([] if beams == 1 else [])",
             SELFRETRIEVAL_FILES),
]  # fmt: skip

# anchor Stage I at the paper's target lengths on 24 GB (issue 34), each against the anchor tests
MUTATIONS += [
    Mutation("anchor Stage I keeps every activation", "irlm/methods/anchor/train.py",
             "checkpointing(encoder.model, cfg.gradient_checkpointing)", "checkpointing(encoder.model, False)",
             ["tests/integration/test_anchor.py"]),
    Mutation("anchor Stage I left in eval mode, where nothing is recomputed", "irlm/methods/anchor/train.py",
             "    model.train(on)\n", "", ["tests/integration/test_anchor.py"]),
    Mutation("reconstruction loss drops its last chunk", "irlm/losses/reconstruction.py",
             "for start in range(0, len(labels), chunk):", "for start in range(0, len(labels) - chunk, chunk):",
             ["tests/integration/test_anchor.py"]),
]  # fmt: skip


def scratch_copy() -> Path:
    """irlm/, tests/ and pyproject.toml in a temporary folder (a few hundred KB)."""
    tmp = Path(tempfile.mkdtemp(prefix="irlm-mutations-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("irlm", "tests"):
        shutil.copytree(ROOT / name, tmp / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def run_tests(copy: Path, tests: list[str]) -> bool:
    """True when every test passes. The copy comes first on the path, ahead of the editable install."""
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1",
           "IRLM_DATA": os.environ.get("IRLM_DATA", str(ROOT.parent / "shared" / "data"))}  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True).returncode == 0


def apply(copy: Path, m: Mutation) -> str:
    """Make the change in the copy; returns the original text to put back."""
    path = copy / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.file}: the line to mutate for '{m.name}' occurs {text.count(m.old)} times, not once")
    path.write_text(text.replace(m.old, m.new))
    return text


def check(copy: Path, m: Mutation, baselines: dict) -> str:
    key = tuple(m.tests)
    if key not in baselines:  # the unmutated copy runs each distinct test set once
        baselines[key] = run_tests(copy, m.tests)
    if not baselines[key]:
        return "baseline fails"
    original = apply(copy, m)
    try:
        return "not caught" if run_tests(copy, m.tests) else "caught"
    finally:
        (copy / m.file).write_text(original)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only mutations whose name contains this (several: a|b)")
    keys = ap.parse_args().k.lower().split("|")
    chosen = [m for m in MUTATIONS if any(k in m.name.lower() for k in keys)]
    if not chosen:
        raise SystemExit(f"no mutation's name contains {' or '.join(map(repr, keys))}")
    copy = scratch_copy()
    width, results, baselines = max(len(m.name) for m in chosen), [], {}
    try:
        for m in chosen:  # each verdict printed as it comes: a full run takes many minutes on 2 cores
            results.append(check(copy, m, baselines))
            print(f"{m.name:<{width}}  {results[-1]:<14}  {' '.join(t.split('::')[-1] for t in m.tests)}", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    caught = sum(v == "caught" for v in results)
    print(f"{caught} of {len(results)} mutations caught")
    sys.exit(0 if caught == len(results) else 1)


if __name__ == "__main__":
    main()
