"""Settings files: a config dataclass read from YAML with `key=value` overrides from the command line
(load_config), YAML read safely with one-line errors (read_yaml: no anchors or aliases), a recipe's typed
`expected:` numbers (parse_expected), and the nearest known name for a typo (did_you_mean).

Example:
    >>> cfg = load_config(AnchorConfig, "recipes/anchor-scifact-tiny.yaml", ["lr=1e-4"])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

from irlm.errors import InputError


def load_config(cls, path: str | Path | None, overrides: list[str] | None = None):
    """A config dataclass from YAML, with `key=value` overrides from the command line winning.

    Unknown keys are an error naming the file, so a typo never silently falls back to a default.
    """
    values = {}
    if path:
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise InputError("expected a mapping of settings", str(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InputError(f"override '{item}' is not key=value")
        values[key.strip()] = _yaml_value(raw, item)
    where = str(path) if path else None
    parse_expected(values.get("expected"), where)  # checked here, read by `irlm.pipeline.expectations`
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known - {"expected"})  # `expected`: the numbers a recipe should reach
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}{did_you_mean(unknown[0], known)}",
                         str(path) if path else None)  # fmt: skip
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return cls(**{k: _as_declared(k, v, types[k], path) for k, v in values.items() if k in known})


@dataclasses.dataclass(frozen=True)
class Expected:
    """A number a recipe says it reaches: `metric` (ndcg@10, ...) on dataset `data` (None: the one it trains
    on), `value`, give or take `tolerance` (absolute)."""

    metric: str
    data: str | None
    value: float
    tolerance: float = 0.01  # a default for recipes that set none; a recipe that knows its spread sets its own


EXPECTED_KEYS = ("metric", "data", "value", "tolerance")


def parse_expected(raw, where: str | None = None) -> list[Expected]:
    """A recipe's `expected:`, typed. Either a mapping {DATA_METRIC: value} (`scifact_ndcg@10: 0.4036`, or a
    bare metric), where a value may also be {value: v, tolerance: t}; or a list of
    {metric, data, value, tolerance} mappings. Anything else is one line naming the file.

    Example:
        >>> parse_expected({"scifact_ndcg@10": 0.4036})
        [Expected(metric='ndcg@10', data='scifact', value=0.4036, tolerance=0.01)]
    """
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [_expected_entry(_expected_key(str(key), where), value, where) for key, value in raw.items()]
    if isinstance(raw, list):
        return [_expected_item(item, n, where) for n, item in enumerate(raw, 1)]
    raise InputError(f"expected: a mapping {{DATA_METRIC: value}} or a list of {{{', '.join(EXPECTED_KEYS)}}}, "
                     f"got {type(raw).__name__}", where)  # fmt: skip


def _expected_key(key: str, where: str | None) -> tuple[str, str | None]:
    """'scifact_ndcg@10' -> ('ndcg@10', 'scifact'); 'map' -> ('map', None)."""
    from irlm.eval.metrics import KNOWN, METRIC

    data, _, metric = key.rpartition("_")
    if METRIC.fullmatch(key):
        return key, None
    if data and METRIC.fullmatch(metric):
        return metric, data
    raise InputError(f"expected: '{key}' is not METRIC or DATA_METRIC (metrics: {', '.join(KNOWN)})", where)


def _expected_entry(metric_data: tuple[str, str | None], value, where: str | None) -> Expected:
    metric, data = metric_data
    if isinstance(value, dict):
        return _expected_item({"metric": metric, "data": data, **value}, None, where)
    return Expected(metric, data, _number(value, f"expected: {metric}", where))


def _expected_item(item, n: int | None, where: str | None) -> Expected:
    label = f"expected: entry {n}" if n else f"expected: {item.get('metric')}" if isinstance(item, dict) else ""
    if not isinstance(item, dict):
        raise InputError(f"{label} is not a mapping of {', '.join(EXPECTED_KEYS)} (got {item!r})", where)
    unknown = sorted(map(str, set(item) - set(EXPECTED_KEYS)))
    if unknown or "metric" not in item or "value" not in item:
        what = f"has unknown key '{unknown[0]}'" if unknown else "needs 'metric' and 'value'"
        raise InputError(f"{label} {what} (keys: {', '.join(EXPECTED_KEYS)})", where)
    from irlm.eval.metrics import KNOWN, METRIC

    metric, data = item["metric"], item.get("data")
    if not isinstance(metric, str) or not METRIC.fullmatch(metric):
        raise InputError(f"{label}: unknown metric {metric!r} (known: {', '.join(KNOWN)})", where)
    if data is not None and not isinstance(data, str):
        raise InputError(f"{label}: data must be a dataset name, got {data!r}", where)
    tolerance = _number(item.get("tolerance", Expected.tolerance), f"{label}: tolerance", where)
    if tolerance < 0:
        raise InputError(f"{label}: tolerance must be at least 0, got {tolerance}", where)
    return Expected(metric, data, _number(item["value"], f"{label}: value", where), tolerance)


def _number(value, label: str, where: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{label} must be a number, got {value!r}", where)
    return float(value)


def read_yaml(path: str | Path):
    """Parse a YAML file; a missing file or a syntax error is one line naming the file and line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", str(path))
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_loader())
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", str(path)) from None
    except yaml.YAMLError as e:
        if isinstance(e, yaml_loader().Refused):
            raise InputError(e.problem, str(path), e.problem_mark.line + 1) from None
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"YAML syntax error: {problem}", str(path), mark.line + 1 if mark else None) from None


@cache
def yaml_loader():
    """PyYAML's SafeLoader without anchors (&a) and aliases (*a): a few nested aliases in a 1 KB file expand to
    gigabytes, and an alias inside its own anchor makes a structure with no end. irlm's files need neither.
    Its `Refused` error (a YAMLError) carries the line in `problem_mark`."""
    import yaml

    class Refused(yaml.composer.ComposerError):
        pass

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise Refused(None, None, "YAML anchors (&name) and aliases (*name) are not accepted; write the "
                              "value out in full", event.start_mark)  # fmt: skip
            return super().compose_node(parent, index)

    NoAliasLoader.Refused = Refused
    return NoAliasLoader


def _yaml_value(raw: str, item: str):
    import yaml

    try:
        return yaml.load(raw, Loader=yaml_loader())
    except yaml.YAMLError as e:
        why = e.problem if isinstance(e, yaml_loader().Refused) else "the value is not valid YAML"
        raise InputError(f"override '{item}': {why}") from None


def did_you_mean(name: str, known) -> str:
    """'; did you mean 'x'?' for the nearest known name, or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _as_declared(key: str, value, declared: str, path):
    """YAML 1.1 reads `1e-5` (no dot) as a string; a setting declared float or int gets the number.
    A value of the wrong type for a plain int, float, str or bool setting is an error naming it."""
    optional = declared.endswith(" | None")
    kind = declared.removesuffix(" | None")
    where = str(path) if path else None
    if isinstance(value, str) and kind in ("float", "int"):
        try:
            return float(value) if kind == "float" else int(value)
        except ValueError:
            raise InputError(f"setting {key}: expected {kind}, got '{value}'", where) from None
    if kind not in SIMPLE_TYPES or (value is None and optional):
        return value
    wrong_bool = isinstance(value, bool) and kind != "bool"  # YAML `yes` is not a number
    if wrong_bool or not isinstance(value, SIMPLE_TYPES[kind]):
        raise InputError(f"setting {key}: expected {kind}, got {type(value).__name__} {value!r}", where)
    return value
