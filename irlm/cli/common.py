"""What every group of `irlm` commands shares: the app, the error console, the common options and the
checks of output folders and encoder flags."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from irlm import options as opt
from irlm.errors import InputError
from irlm.utils import check_output

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Decoder-only LLMs as retrieval systems.")


err = Console(stderr=True)


DataOpt = typer.Option(..., "--data", help="Dataset name (see `irlm data list`) or BEIR folder.")


ModelOpt = typer.Option("minilm-l6", "--model", help="Bundled name (minilm-l6, smollm2-135m), hub id or folder.")


DeviceOpt = typer.Option(None, "--device", help="cuda, cpu, cuda:1 ...; default: CUDA when present.")


ForceOpt = typer.Option(False, "--force", help="Replace an irlm folder of another kind at the output (never a run "
                        "directory, nor a folder irlm did not make).")  # fmt: skip


SetOpt = typer.Option(None, "--set", help="Override a config field: --set stage2_steps=10 (repeatable).")


def home(path: Path | None) -> Path | None:
    """An output path with `~` expanded as the shell would: a quoted "~/runs/x" must not make a folder named ~."""
    return path.expanduser() if path is not None else None


def encoder_options(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def check_encoder_flags(backend: str, batch_size: int | None, dtype: str | None, device: str | None,
                         pooling: str | None = None) -> None:  # fmt: skip
    opt.one_of(backend, opt.BACKENDS, "--backend")
    opt.at_least(batch_size, 1, "--batch-size")
    opt.one_of(dtype, opt.DTYPES, "--dtype")
    opt.one_of(pooling, opt.POOLINGS, "--pooling")
    opt.device(device)


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def printable(text: str) -> str:
    """`text` for a terminal: control characters (an escape sequence in an id from an older index) and lone
    surrogates shown as Python escapes, not sent as they are."""
    return text if text.isprintable() else repr(text)[1:-1]


def split_queries(data: str, split: str):
    from irlm.data import load_dataset

    ds = load_dataset(data)
    if split not in ds.qrels:
        raise InputError(f"dataset '{data}' has no split '{split}' (has: {', '.join(ds.qrels)})")
    return ds.split_queries(split)


def refuse_unused(ctx: typer.Context, names: tuple[str, ...], why: str) -> None:
    """Refuse a flag given on the command line that this mode would ignore: a silently ignored --dtype or
    --backend reports numbers of another system than the command line names."""
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # by name: typer's click and click's own are two enums
        if param.name in names and source is not None and source.name != "DEFAULT":
            raise InputError(f"{param.opts[0]} {why}")


def checked_output(cfg, force: bool):
    """`cfg`, its output_dir checked before any model loads: new, empty, or an earlier training output (with
    --force also an irlm folder of another kind, which is then replaced)."""
    check_output(cfg.output_dir, "output_dir", folder=True, kind="model", force=force)
    return cfg
