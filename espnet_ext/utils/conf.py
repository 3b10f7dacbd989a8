"""Config files and ``*_conf`` sections: one loader for YAML mappings, one merge rule,
one unknown-key check, each error naming the file, section and key.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type, TypeVar

import yaml

T = TypeVar("T")


def load_yaml(path: str | Path) -> Dict[str, Any]:
    """A YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def merge_configs(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """``override`` wins; dict values (the ``*_conf`` options) merge one level deep."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def check_conf_keys(
    cls: type, conf: Optional[Dict[str, Any]], conf_name: str, exclude=(), check_missing: bool = True
) -> None:
    """Raise ``ValueError`` naming ``conf_name`` and the key for unknown (or missing) keys."""
    conf = conf or {}
    if not isinstance(conf, Mapping):
        raise ValueError(f"{conf_name}: expected a mapping of options, got {type(conf).__name__}")
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", *exclude)]
    unknown = sorted(set(conf) - set(accepted))
    if unknown:
        raise ValueError(
            f"{conf_name}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {accepted}"
        )
    if not check_missing:
        return
    missing = [
        n for n, p in params.items()
        if n not in ("self", *exclude) and p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in conf
    ]
    if missing:
        raise ValueError(f"{conf_name}: missing required key(s) {missing} for {cls.__name__}")


def build_from_conf(cls: Type[T], conf: Optional[Dict[str, Any]], conf_name: str, **fixed: Any) -> T:
    """``cls(**fixed, **conf)`` after :func:`check_conf_keys`; a ``ValueError`` raised by
    ``cls`` itself (a value out of range) is re-raised with ``conf_name`` in front."""
    check_conf_keys(cls, conf, conf_name, exclude=tuple(fixed))
    try:
        return cls(**fixed, **(conf or {}))
    except (TypeError, ValueError) as e:
        if str(e).startswith(conf_name):
            raise
        raise ValueError(f"{conf_name}: {e}") from e


def load_sections(path: str | Path, sections: Mapping[str, type]) -> Dict[str, Any]:
    """A YAML file of named sections, each built into its settings class.

    ``sections`` maps section name → class; an unknown top-level key, an unknown key in
    a section or a bad value raises ``ValueError`` naming the file and section.  Absent
    sections get the class defaults.
    """
    raw = load_yaml(path)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown} (expected {', '.join(sections)})")
    return {name: build_from_conf(cls, raw.get(name) or {}, f"{path}: {name}")
            for name, cls in sections.items()}
