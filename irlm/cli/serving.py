"""The two servers: `irlm serve` (a retriever) and `irlm serve-llm` (a generator for HTTP teachers)."""

from __future__ import annotations

import typer

from irlm import options as opt
from irlm.cli.common import (
    DeviceOpt,
    app,
)


@app.command("serve-llm")
def serve_llm_cmd(
    model: str = typer.Option("smollm2-135m", "--model", help="Bundled name, hub id or folder to serve."),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback should set an API key."),
    port: int = typer.Option(8000),
    api_key_env: str = typer.Option("IRLM_API_KEY", help="Environment variable holding the key clients must send."),
    batch_size: int = typer.Option(8, help="Concurrent requests micro-batched into one generate call."),
    max_tokens: int = typer.Option(1024, help="The most new tokens one request may ask for (bounds others' wait)."),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32."),
    device: str | None = DeviceOpt,
) -> None:
    """Serve a model behind the OpenAI completions and chat API (for `--teacher http://host:port/v1`)."""
    from irlm.models.generator.server import serve_llm

    _check_server_flags(port, batch_size, device)
    opt.at_least(max_tokens, 1, "--max-tokens")
    opt.one_of(dtype, opt.DTYPES, "--dtype")
    serve_llm(model=model, host=host, port=port, api_key_env=api_key_env, batch_size=batch_size, device=device,
              dtype=dtype, max_tokens=max_tokens)  # fmt: skip


@app.command("serve")
def serve_cmd(
    index: str = typer.Option(..., "--index", help="An index folder (irlm index) or a Self-Retrieval model folder."),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback should set an API key."),
    port: int = typer.Option(8001),
    api_key_env: str = typer.Option("IRLM_API_KEY", help="Environment variable holding the key clients must send."),
    batch_size: int = typer.Option(16, help="Concurrent requests micro-batched into one search or encode call."),
    data: str | None = typer.Option(None, help="Self-Retrieval only: the corpus the model memorised."),
    device: str | None = DeviceOpt,
    model_name: str | None = typer.Option(None, "--model-name",
                                          help="The model id /v1/models lists and /v1/embeddings expects "
                                               "(default: the encoder's model name or path)."),  # fmt: skip
    writable: bool = typer.Option(False, "--writable",
                                  help="Accept POST /documents and DELETE /documents/{id} (BM25, dense, hybrid), "
                                       "each saved to the index folder before it is answered."),  # fmt: skip
) -> None:
    """Serve a retriever: POST /search, POST /encode, POST /v1/embeddings, GET /v1/models, GET /health, GET /metrics;
    with --writable also POST /documents and DELETE /documents/{id}."""
    from irlm.serve import serve

    _check_server_flags(port, batch_size, device)
    serve(index, host=host, port=port, api_key_env=api_key_env, batch_size=batch_size, device=device, data=data,
          model_name=model_name, writable=writable)  # fmt: skip


def _check_server_flags(port: int, batch_size: int, device: str | None) -> None:
    opt.port(port)
    opt.at_least(batch_size, 1, "--batch-size")
    opt.device(device)
