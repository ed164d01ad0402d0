"""`irlm serve-llm` started through the CLI: `irlm augment --teacher http://...` against it (the README's
command), and the bounds that keep one client from stalling the others (max_tokens, stop strings, body size,
cancellation at shutdown)."""

from __future__ import annotations

import json
import subprocess
import threading

import httpx
import pytest
from conftest import cli, irlm_server, write_beir

from irlm.batching import MicroBatcher, closing_lifespan
from irlm.models.generator.base import SamplingParams
from irlm.models.generator.server import MAX_BODY_BYTES, MAX_STOP, MAX_STOP_CHARS

LIMIT = 24  # --max-tokens given to the server below


@pytest.fixture(scope="module")
def server(lm_dir, tmp_path_factory):
    """Base URL (…/v1) of `irlm serve-llm` on the tiny causal LM, without a key."""
    args = ["serve-llm", "--model", lm_dir, "--device", "cpu", "--dtype", "fp32", "--max-tokens", LIMIT]
    with irlm_server(args, tmp_path_factory.mktemp("serve-llm-cli") / "server.log") as (url, _):
        yield f"{url}/v1"


def test_augment_qgen_through_the_cli_against_serve_llm(server, lm_dir, tmp_path):
    docs = [{"_id": f"d{i}", "title": f"Topic {i}", "text": f"document {i} is about subject {i} and its history"}
            for i in range(8)]  # fmt: skip
    beir = write_beir(tmp_path / "beir", docs, [{"_id": "q", "text": "subject"}], {"test": [("q", "d0", 1)]})
    out = tmp_path / "qgen.jsonl"
    res = subprocess.run(cli("augment", "--strategy", "qgen", "--data", beir, "--out", out, "--teacher", server,
                             "--n", 3, "--set", "max_new_tokens=8", "--set", "retries=1", "--set", "top_k=4",
                             "--set", "negatives_from=2"), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    assert stats["examples"] + stats["skipped"] == 3 and stats["this_run"]["completion_tokens"] > 0
    assert all(json.loads(line)["teacher"] == str(lm_dir) for line in out.read_text().splitlines())


def chat(server: str, **body) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Tell me a long story about rivers."}], **body}
    return httpx.post(f"{server}/chat/completions", json=body, timeout=60)


def test_a_chat_without_max_tokens_gets_the_servers_bound(server):
    r = chat(server, temperature=1.0, seed=3)
    assert r.status_code == 200, r.text
    assert 0 < r.json()["usage"]["completion_tokens"] <= LIMIT


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": LIMIT + 1}, "max_tokens"),
    ({"max_completion_tokens": 10_000}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"][: MAX_STOP + 1]}, "stop"),
    ({"stop": "x" * (MAX_STOP_CHARS + 1)}, "stop"),
])  # fmt: skip
def test_requests_past_the_bounds_are_refused(server, body, param):
    r = chat(server, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_body_over_the_limit_is_refused_unread(server):
    big = b"x" * (MAX_BODY_BYTES + 1)
    r = httpx.post(f"{server}/completions", content=big, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    chunks = iter([b'{"prompt": "', b"x" * MAX_BODY_BYTES, b'"}'])  # no Content-Length: counted while read
    r = httpx.post(f"{server}/completions", content=chunks, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413, r.text
    assert httpx.get(f"{server.removesuffix('/v1')}/health").status_code == 200


def test_a_cancelled_generation_stops_at_the_next_token(lm_dir):
    from irlm.models.generator.local import TransformersGenerator

    gen = TransformersGenerator(str(lm_dir), device="cpu", dtype="fp32")
    params = SamplingParams(max_new_tokens=40)
    assert gen.generate(["The river"], params)[0].completion_tokens > 10
    gen.cancel.set()
    assert gen.generate(["The river"], params)[0].completion_tokens == 1


def test_shutdown_cancels_the_running_batch_before_waiting_for_it():
    import asyncio

    cancel, seen = threading.Event(), []
    batcher = MicroBatcher(lambda xs: xs)
    batcher.close = lambda: seen.append(cancel.is_set())  # what close() would find while joining the worker

    async def lifecycle():
        async with closing_lifespan(batcher, cancel)(None):
            pass

    asyncio.run(lifecycle())
    assert seen == [True] and not cancel.is_set()  # set while the worker is joined, cleared afterwards
