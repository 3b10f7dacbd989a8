"""Build objects from ``*_conf`` dictionaries with errors that name the config key."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Type, TypeVar

T = TypeVar("T")


def check_conf_keys(
    cls: type, conf: Optional[Dict[str, Any]], conf_name: str, exclude=(), check_missing: bool = True
) -> None:
    """Raise ``ValueError`` naming ``conf_name`` and the key for unknown (or missing) keys."""
    conf = conf or {}
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
    """``cls(**fixed, **conf)`` after :func:`check_conf_keys`."""
    check_conf_keys(cls, conf, conf_name, exclude=tuple(fixed))
    return cls(**fixed, **(conf or {}))
