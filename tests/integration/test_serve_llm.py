"""`serve_llm` in a real uvicorn process, used through `OpenAIGenerator`: the same tokens as in-process
generation, usage, ordering under concurrency, auth, 4xx for bad input, and retries (the one stub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import free_port, wait_healthy

from irlm.errors import InputError
from irlm.models.generator.base import BudgetExceeded, SamplingParams
from irlm.models.generator.http import EndpointError, OpenAIGenerator

SCRIPT = Path(__file__).parents[1] / "scripts" / "llm_server.py"
KEY_ENV, KEY = "IRLM_TEST_LLM_KEY", "test-secret-key"
CHATS = [[{"role": "user", "content": f"Write a search query about {t}."}] for t in ("cells", "rivers", "bread")] + [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a protein."}]
]
PLAIN = ["The mitochondria is", "Query for: vitamin D and bone density", "A", "Sourdough starter needs flour and"]


@pytest.fixture(scope="module")
def server(lm_dir, tmp_path_factory):
    """Base URL of `serve_llm` on lm_dir, requiring KEY; the key is set in this process's environment."""
    port = free_port()
    env = {**os.environ, KEY_ENV: KEY, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path_factory.mktemp("llm-server") / "server.log"  # a file, not a pipe: a full pipe would block it
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(lm_dir), str(port), KEY_ENV], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(KEY_ENV, KEY)
            yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def local(lm_dir):
    from irlm.models.generator.local import TransformersGenerator

    return TransformersGenerator(str(lm_dir), device="cpu", dtype="fp32")


def client(server: str, **kw) -> OpenAIGenerator:
    return OpenAIGenerator(server, api_key_env=KEY_ENV, **kw)


def fields(gens) -> list[tuple]:
    return [(g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in gens]


def test_http_generates_what_in_process_generates(server, local, lm_dir):
    remote = client(server)
    assert remote.name == str(lm_dir) and remote.context_length == 256  # discovered through /v1/models
    greedy = SamplingParams(max_new_tokens=12)
    expected = local.generate(CHATS + PLAIN, greedy)
    got = remote.generate(CHATS + PLAIN, greedy)
    assert fields(got) == fields(expected)
    assert all(g.text for g in got) and len({g.text for g in got}) > 1
    assert remote.usage.prompt_tokens == sum(g.prompt_tokens for g in expected) > 0
    assert remote.usage.completion_tokens == sum(g.completion_tokens for g in expected) > 0
    assert remote.usage.seconds > 0
    # a stop string taken from the greedy text itself: both sides must cut at the same place
    word = expected[0].text.split()[2]
    stopped = SamplingParams(max_new_tokens=12, stop=[word])
    assert fields(remote.generate(CHATS[:1], stopped)) == fields(local.generate(CHATS[:1], stopped))
    assert word not in remote.generate(CHATS[:1], stopped)[0].text
    for prompt in (CHATS[3], PLAIN[1]):  # /tokenize gives exact counts, not the len // 4 estimate
        assert remote.count_tokens(prompt) == local.count_tokens(prompt)


def test_eight_concurrent_prompts_come_back_in_order_in_shared_batches(server, local):
    prompts = [f"Passage {i}: {'protein ' * i}folding" for i in range(8)]
    greedy = SamplingParams(max_new_tokens=8)
    before = httpx.get(server.removesuffix("/v1") + "/health").json()
    got = client(server, concurrency=8).generate(prompts, greedy)
    after = httpx.get(server.removesuffix("/v1") + "/health").json()
    assert fields(got) == fields(local.generate(prompts, greedy))
    assert after["prompts"] - before["prompts"] == 8
    assert after["batches"] - before["batches"] < 8  # the server micro-batched concurrent requests


def test_seeded_sampling_is_reproducible_and_matches_in_process(server, local):
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    remote = client(server)
    first, second = remote.generate(PLAIN[:1], params), remote.generate(PLAIN[:1], params)
    assert fields(first) == fields(second) == fields(local.generate(PLAIN[:1], params))


def test_budget_stops_the_next_batch(server):
    remote = client(server, budget=1)
    remote.generate(PLAIN[:1], SamplingParams(max_new_tokens=2))
    with pytest.raises(BudgetExceeded):
        remote.generate(PLAIN[:1], SamplingParams(max_new_tokens=2))


def test_api_key_is_required_and_read_from_the_environment(server, monkeypatch):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(f"{server}/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    monkeypatch.delenv("IRLM_TEST_NO_KEY", raising=False)
    start = time.monotonic()
    with pytest.raises(InputError, match=r"GET .*/v1/models failed with HTTP 401: missing or wrong API key"):
        OpenAIGenerator(server, api_key_env="IRLM_TEST_NO_KEY")
    assert time.monotonic() - start < 2  # a 401 is not retried
    assert client(server).generate(["Hi"], SamplingParams(max_new_tokens=2))[0].completion_tokens > 0


BAD = [
    ("completions", b'{"prompt": "x", "max_tokens": 4'),  # malformed JSON
    ("completions", b"[1, 2]"),
    ("completions", b""),
    ("completions", b'{"prompt": 5}'),
    ("completions", b'{"prompt": ""}'),
    ("completions", b'{"prompt": []}'),
    ("completions", b'{"prompt": "x", "max_tokens": "8"}'),
    ("completions", b'{"prompt": "x", "max_tokens": 0}'),
    ("completions", b'{"prompt": "x", "max_tokens": 100000}'),
    ("completions", b'{"prompt": "x", "n": 2}'),
    ("completions", b'{"prompt": "x", "temperature": "hot"}'),
    ("completions", b'{"prompt": "x", "stop": [1]}'),
    ("completions", b'{"prompt": "x", "model": "not-this-one"}'),
    ("completions", b'{"prompt": "' + b"word " * 400 + b'"}'),  # longer than the 256-token context
    ("chat/completions", b'{"messages": []}'),
    ("chat/completions", b'{"messages": "hi"}'),
    ("chat/completions", b'{"messages": [{"role": "robot", "content": "hi"}]}'),
    ("chat/completions", b'{"messages": [{"role": "user"}]}'),
    ("chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}'),
    ("chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "stream": true}'),
    ("nothing-here", b"{}"),
]


def test_bad_input_is_a_4xx_with_an_openai_error_body(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(headers=headers) as http:
        for path, body in BAD:
            r = http.post(f"{server}/{path}", content=body)
            assert 400 <= r.status_code < 500, (path, body[:60], r.status_code, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], (path, body[:60], err)
        assert http.get(f"{server.removesuffix('/v1')}/health").status_code == 200  # still serving


class FlakyStub(BaseHTTPRequestHandler):
    """Answers 503 (with a short Retry-After) to the first two requests, then one fixed completion."""

    calls = 0

    def do_POST(self):
        FlakyStub.calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if FlakyStub.calls <= 2:
            self.reply(503, {"error": {"message": "warming up", "type": "server_error", "param": None, "code": None}},
                       {"Retry-After": "0.05"})  # fmt: skip
        else:
            usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            self.reply(200, {"choices": [{"index": 0, "text": " ok then", "finish_reason": "stop"}], "usage": usage})

    def reply(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_retries_through_a_late_start_and_503s():
    port = free_port()
    stub = ThreadingHTTPServer(("127.0.0.1", port), FlakyStub, bind_and_activate=False)

    def start_late():
        time.sleep(0.6)  # connections are refused until then
        stub.server_bind()
        stub.server_activate()
        stub.serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", model="stub", context_length=64, max_retries=8,
                          backoff=0.05, api_key_env=None)  # fmt: skip
    start = time.monotonic()
    try:
        (g,) = gen.generate(["hello"], SamplingParams(max_new_tokens=2))
    finally:
        stub.shutdown()
        stub.server_close()
    assert (g.text, g.prompt_tokens, g.completion_tokens) == ("ok then", 3, 2)
    assert FlakyStub.calls == 3 and time.monotonic() - start >= 0.6


def test_dead_port_fails_clearly_after_max_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = OpenAIGenerator(url, model="m", context_length=64, max_retries=2, backoff=0.01, api_key_env=None)
    with pytest.raises(EndpointError, match=rf"POST {url}/completions failed after 3 attempts: ConnectError"):
        gen.generate(["hello"])
