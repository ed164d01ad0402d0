"""Shared fixtures: tiny random models built once per session, and toy BEIR folders.

Like sentence-transformers' tests/conftest.py, the models are random but real: a 2-layer
Llama (decoder, last-token pooling) and a 2-layer BERT (encoder, mean pooling), each
saved with save_pretrained so `LLMEncoder.from_pretrained(folder)` loads them like any
user model. initializer_range=0.2 (10x the default) gives attention sharp enough that a
wrong mask or wrong positions visibly change the embeddings.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

# before transformers is imported anywhere: tests never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# under pytest-xdist (`make test`: one worker per core) each worker and its child processes keep to one thread
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# the real data lives beside the repository (../shared/data), never inside it
os.environ.setdefault("IRLM_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

import pytest  # noqa: E402

DATA = Path(os.environ["IRLM_DATA"])


def write_jsonl(path: Path, rows: list[dict], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        for row in rows:
            f.write(json.dumps(row) + newline)
    return path


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[tuple]],
               newline: str = "\n") -> Path:  # fmt: skip
    """A BEIR folder from plain rows; qrels maps split -> [(qid, docid, score), ...]."""
    write_jsonl(folder / "corpus.jsonl", corpus, newline)
    write_jsonl(folder / "queries.jsonl", queries, newline)
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            f.write(newline.join(lines) + newline)
    return folder


TOY_CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "the cat sat on the warm mat all afternoon"},
    {"_id": "d2", "title": "Dogs", "text": "dogs bark loudly at the postman every morning"},
    {"_id": "d3", "title": "", "text": "quantum computers use qubits and superposition"},
    {"_id": "d4", "title": "Bread", "text": "sourdough bread needs flour water salt and a starter"},
    {"_id": "d5", "title": "Rivers", "text": "the nile river flows north through egypt into the sea"},
]
TOY_QUERIES = [
    {"_id": "q1", "text": "why do dogs bark"},
    {"_id": "q2", "text": "how does a quantum computer work"},
    {"_id": "q3", "text": "baking sourdough bread"},
]
TOY_QRELS = {"test": [("q1", "d2", 1), ("q2", "d3", 1), ("q3", "d4", 2)]}


@pytest.fixture
def toy_beir(tmp_path) -> Path:
    return write_beir(tmp_path / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer (vocab 49152), saved as a transformers folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from irlm.models.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaModel(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lm_dir(llama_dir, tmp_path_factory) -> Path:
    """llama_dir holds a bare LlamaModel, whose lm_head each loading process would draw afresh at random;
    a saved causal LM with the same config and tokenizer gives the server and this process the same weights."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama-lm")
    LlamaForCausalLM(AutoConfig.from_pretrained(llama_dir)).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok(lm_dir):
    """lm_dir's tokenizer (the Self-Retrieval tests' causal LM)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lm_dir)


@pytest.fixture(scope="module")
def model(lm_dir):
    """lm_dir as a causal LM in fp32, one per test module (a module may train or copy it)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT with all-MiniLM-L6-v2's tokenizer, saved as a transformers folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from irlm.models.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertModel(config)
    folder = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_encoder(llama_dir):
    from irlm.models.encoder import LLMEncoder

    return LLMEncoder.from_pretrained(str(llama_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def bert_encoder(bert_dir):
    from irlm.models.encoder import LLMEncoder

    return LLMEncoder.from_pretrained(str(bert_dir), device="cpu", dtype="fp32")


def same_run(a, b) -> None:
    """Two runs rank the same documents in the same order, with scores equal to 1e-5."""
    assert a.keys() == b.keys()
    for q in a:
        assert list(a[q]) == list(b[q])
        assert a[q] == pytest.approx(b[q], abs=1e-5)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for the tests' real server processes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc, log: Path, timeout: float = 300) -> None:
    """Wait for GET url/health to answer 200; fail with the server's log if it exits first."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def cli(*args) -> list[str]:
    """The `irlm` command as a subprocess argv, run by this interpreter."""
    return [sys.executable, "-c", "from irlm.cli import run; run()", *map(str, args)]


@contextlib.contextmanager
def irlm_server(args: list, log: Path, timeout: float = 300):
    """(base URL, process) of `irlm ARGS --port P` once /health answers; stopped (if still running) after."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("IRLM_API_KEY", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cli(*args, "--port", port), env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout)  # a loaded 2-core machine has taken over 90 s to start one
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)


def torchrun(args: list, env: dict, timeout: float = 300) -> None:
    """`python -m torch.distributed.run --nproc_per_node=2 ARGS` on a fresh port, failing with its stderr.

    One retry: the port is free when picked but can be taken before the launcher binds it, and a rendezvous
    on a loaded 2-core machine has failed once without a trace. A real bug fails both times."""
    import subprocess
    import sys
    import warnings

    for attempt in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               *map(str, args)]  # fmt: skip
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if res.returncode == 0:
            return
        if attempt == 1:
            warnings.warn(f"torchrun failed once ({res.returncode}), retrying:\n{res.stderr[-2000:]}", stacklevel=2)
    raise AssertionError(f"torchrun exited with {res.returncode}:\n{res.stderr[-4000:]}")
