"""Serve a model folder with `serve_llm` in fp32 on the CPU; the serving tests start this as a real process.

usage: llm_server.py MODEL_DIR PORT [API_KEY_ENV]
"""

from __future__ import annotations

import sys

from irlm.models.generator.server import serve_llm

if __name__ == "__main__":
    folder, port = sys.argv[1], int(sys.argv[2])
    key_env = sys.argv[3] if len(sys.argv) > 3 else None
    # fp32 on the CPU, as the test's in-process generator, so both produce the very same tokens
    serve_llm(folder, port=port, api_key_env=key_env, batch_size=8, device="cpu", dtype="fp32")
