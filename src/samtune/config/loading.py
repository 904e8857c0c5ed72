"""YAML files and ``--set a.b=c`` overrides into validated config models, and back to YAML.

Unknown keys are refused with the closest valid key suggested, at any depth
(``train.optimzer.lr`` -> "did you mean 'train.optimizer'?"); values keep their YAML types
(``--set train.max_steps=200`` is an int, ``--set model.freeze=[image_encoder]`` a list).
A number in the key addresses an item of a list: ``--set data.train.0.skip_bad=true``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from samtune.errors import SamtuneError

M = TypeVar("M", bound=BaseModel)


class ConfigError(SamtuneError):
    """A config file or override that does not fit the schema."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, found {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries into nested dicts (a copy); values parse as YAML scalars/lists."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.max_steps=200")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from e
        _set_path(out, key.strip().split("."), value, item)
    return out


def _set_path(node: Any, parts: list[str], value: Any, item: str) -> None:
    """Set ``value`` at ``parts`` below ``node``: dict keys (created when missing) and list
    indices (which must exist: ``data.train.1`` of a one-source list is an error)."""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                where = ".".join(parts[:depth])
                raise ConfigError(f"--set {item!r}: {where} is a list of {len(node)} item(s); "
                                  f"address one by its index 0..{len(node) - 1}, not {part!r}")
            index = int(part)
            if last:
                node[index] = value
                return
            node = node[index]
            continue
        if last:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = {}
            node[part] = child
        node = child


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """``model.model_validate(data)`` with errors rewritten as one readable message."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: " + "; ".join(_explain(model, err) for err in e.errors())) from None


def _explain(model: type[BaseModel], err: dict) -> str:
    loc, variant = _path(model, [str(p) for p in err["loc"]])
    where = ".".join(loc)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(model, [str(p) for p in err["loc"]][:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        prefix = ".".join(loc[:-1] + close) if close else ""
        keys = ", ".join(sorted(valid))
        hint = (f"; did you mean '{prefix}'?" if close else
                f"; name {variant!r} takes {keys}" if variant else f"; valid keys here: {keys}")
        return f"unknown key '{where}'{hint}"
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return f"{where}.name: {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    return f"{where}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else "")


def _path(model: type[BaseModel], loc: list[str]) -> tuple[list[str], str | None]:
    """An error location as the user wrote it: without the tags pydantic inserts after a
    section that has variants (``train.schedule.cosine.power`` -> ``train.schedule.power``),
    and the last such tag."""
    out, variant, current = [], None, model
    parts = iter(loc)
    for part in parts:
        out.append(part)
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            out.extend(parts)
            break
        variants = _variants(field)
        if variants:
            variant = next(parts, None)
            current = variants.get(variant)
        else:
            current = _model_in(field.annotation)
    return out, variant


def _variants(field: Any) -> dict[str, type[BaseModel]]:
    """Tag -> model of a field that is a discriminated union (``train.schedule``), else {}."""
    if not field.discriminator:
        return {}
    return {get_args(cls.model_fields[field.discriminator].annotation)[0]: cls
            for cls in get_args(field.annotation)}


def _valid_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names (and aliases) of the sub-model at ``loc`` (pydantic's location, with the
    variant tags)."""
    current: Any = model
    parts = iter(loc)
    for part in parts:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        variants = _variants(field)
        current = variants.get(next(parts, None)) if variants else _model_in(field.annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    return list(fields) + [f.alias for f in fields.values() if f.alias]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as ``Foo | None`` or ``dict[str, Foo]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def to_yaml(config: BaseModel) -> str:
    """Every field written out, defaults included, in a form :func:`read_yaml` reads back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
