"""Data files shipped inside the package, under ``espnet_ext/data/resources/``.

Files are YAML read with PyYAML's base loader: every scalar stays a string ("yes",
"no", "7" and "NO" are never turned into booleans or numbers), so a table row means
exactly what it says.  :class:`Record` wraps one mapping of such a file with typed
accessors; a missing key or a value of the wrong shape raises
:class:`~espnet_ext.data.kaldi_dir.DataError` naming the file and the key path.

Example::

    doc = load_yaml_resource("demo_world", "geography.yaml")
    for country in doc.records("countries"):
        name, capitals = country.text("country"), country.texts("capitals")
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, List, Mapping, Optional, Tuple

import yaml

from espnet_ext.data.kaldi_dir import DataError

#: folder of the data files, relative to the ``espnet_ext.data`` package
RESOURCE_DIR = "resources"

# The C loader when PyYAML was built with libyaml; both keep every scalar a string.
_BaseLoader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


@dataclass(frozen=True)
class Record:
    """One mapping of a data file; ``where`` names the file and the key path to it."""

    data: Mapping[str, Any]
    where: str

    def has(self, key: str) -> bool:
        """Whether ``key`` is present."""
        return key in self.data

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise DataError(f"{self.where}: missing key {key!r}")
        return self.data[key]

    def text(self, key: str) -> str:
        """The string at ``key``."""
        value = self._get(key)
        if not isinstance(value, str):
            raise DataError(f"{self.where}.{key}: expected a string, got {type(value).__name__}")
        return value

    def optional_text(self, key: str) -> Optional[str]:
        """The string at ``key``, ``None`` when the key is absent."""
        return self.text(key) if self.has(key) else None

    def texts(self, key: str, default: Optional[Tuple[str, ...]] = None) -> Tuple[str, ...]:
        """The list of strings at ``key``; ``default`` (when given) if the key is absent."""
        if default is not None and not self.has(key):
            return default
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"{self.where}.{key}: expected a list of strings")
        return tuple(value)

    def integer(self, key: str) -> int:
        """The whole number at ``key``."""
        return _to_int(self.text(key), f"{self.where}.{key}")

    def integers(self, key: str) -> Tuple[int, ...]:
        """The list of whole numbers at ``key``."""
        return tuple(_to_int(v, f"{self.where}.{key}") for v in self.texts(key))

    def flag(self, key: str) -> bool:
        """The boolean at ``key`` (``true`` or ``false``), ``False`` when absent."""
        if not self.has(key):
            return False
        value = self.text(key)
        if value not in ("true", "false"):
            raise DataError(f"{self.where}.{key}: expected true or false, got {value!r}")
        return value == "true"

    def record(self, key: str) -> Record:
        """The mapping at ``key``."""
        value = self._get(key)
        if not isinstance(value, dict):
            raise DataError(f"{self.where}.{key}: expected a mapping")
        return Record(value, f"{self.where}.{key}")

    def records(self, key: str) -> List[Record]:
        """The list of mappings at ``key``, in file order."""
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise DataError(f"{self.where}.{key}: expected a list of mappings")
        return [Record(v, f"{self.where}.{key}[{i}]") for i, v in enumerate(value)]


def _to_int(value: str, where: str) -> int:
    """Parse a decimal whole number; errors name ``where``."""
    try:
        return int(value)
    except ValueError as e:
        raise DataError(f"{where}: expected a whole number, got {value!r}") from e


@functools.cache
def _read_yaml(*parts: str) -> Any:
    """Parse one data file (cached: the files are part of the installed package)."""
    path = resources.files("espnet_ext.data").joinpath(RESOURCE_DIR)
    for part in parts:
        path = path.joinpath(part)
    name = "/".join((RESOURCE_DIR, *parts))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"espnet_ext/data/{name}: cannot read the bundled data file ({e})") from e
    try:
        return yaml.load(text, Loader=_BaseLoader)
    except yaml.YAMLError as e:
        raise DataError(f"espnet_ext/data/{name}: not valid YAML ({e})") from e


def load_yaml_resource(*parts: str) -> Record:
    """The top-level mapping of ``espnet_ext/data/resources/<parts...>``.

    The parsed file is cached per process; callers must not modify what they read.
    """
    data = _read_yaml(*parts)
    where = "/".join(parts)
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a mapping at the top level")
    return Record(data, where)


def list_yaml_resources(folder: str) -> List[str]:
    """File names of the ``*.yaml`` data files in ``resources/<folder>/``, sorted."""
    path = resources.files("espnet_ext.data").joinpath(RESOURCE_DIR).joinpath(folder)
    if not path.is_dir():
        raise DataError(f"espnet_ext/data/{RESOURCE_DIR}/{folder}: no such data folder")
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".yaml"))


__all__ = ["RESOURCE_DIR", "Record", "list_yaml_resources", "load_yaml_resource"]
