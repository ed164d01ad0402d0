"""OpenAIGenerator's errors over the openai client: a server out of budget (429 insufficient_quota) is
BudgetExceeded at once, a wrong request one line naming the URL and status; neither is retried."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port

from irlm.models.generator.base import BudgetExceeded
from irlm.models.generator.http import OpenAIGenerator, RequestRefused

ANSWERS = {"/v1/completions": (429, "insufficient_quota", "the server's token budget is spent"),
           "/v1/chat/completions": (400, "invalid_request", "messages: too short")}  # fmt: skip


class Refusing(BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_POST(self):
        Refusing.calls.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        status, code, message = ANSWERS[self.path]
        data = json.dumps({"error": {"message": message, "type": "x", "param": None, "code": code}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def url():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_a_spent_budget_and_a_bad_request_fail_in_one_line(url):
    gen = OpenAIGenerator(url, model="m", context_length=64, max_retries=0, api_key_env=None)
    with pytest.raises(BudgetExceeded, match=r"POST .*/v1/completions: HTTP 429: the server's token budget"):
        gen.generate(["hello"])
    with pytest.raises(RequestRefused, match=r"POST .*/v1/chat/completions failed with HTTP 400: messages: too"):
        gen.generate([[{"role": "user", "content": "hi"}]])
    assert Refusing.calls == ["/v1/completions", "/v1/chat/completions"]
