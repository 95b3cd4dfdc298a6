"""The allowed range of every numeric setting, declared next to the setting.

A setting's dataclass field carries its range (:func:`bounded`); the config loader
(:mod:`conceptevo.config`) checks every value against it when a study is read, so that an
accepted value is finite and can neither exhaust memory nor make a stage run for ever, and an
error names the key, the value and the range. The ranges are wide: the reference defaults sit
well inside them, and each bound says what it protects.
"""

from __future__ import annotations

import dataclasses
import math
import re

from .errors import ConfigError

#: seeds feed numpy's and torch's generators, which take 0 .. 2**32 - 1 everywhere
MAX_SEED = 2 ** 32 - 1
#: longest run name (a folder name; file systems allow 255 bytes per name)
MAX_NAME = 100
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def bounded(default, lo: float, hi: float, *, lo_open: bool = False, items: bool = False,
            why: str = ""):
    """A dataclass field whose value (or, with ``items``, each item of a list) must lie in
    [lo, hi] ((lo, hi] with ``lo_open``) and be finite; ``why`` explains the bound in the
    error."""
    meta = {"range": (lo, hi, lo_open, items, why)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def same_as(cls, name: str):
    """A dataclass field with the default and declared range of field ``name`` of the dataclass
    ``cls``: a config table that exposes an estimator's hyper-parameter declares it once, on
    the estimator's parameters."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=f.default, metadata=f.metadata)


def check_fields(value, where: str) -> None:
    """Every declared range of the dataclass instance ``value``; ``where`` names its table."""
    for f in dataclasses.fields(value):
        check_field(f, getattr(value, f.name), f"[{where}] {f.name}")


def _text(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else f"{v:,}".replace(",", "_") \
        if abs(v) >= 10 ** 6 else str(v)


def describe_range(lo: float, hi: float, lo_open: bool) -> str:
    if math.isinf(hi):
        return f"{'>' if lo_open else '>='} {_text(lo)}"
    return (f"{'>' if lo_open else 'between'} {_text(lo)} {'and <=' if lo_open else 'and'} "
            f"{_text(hi)}")


def check_number(value, where: str, lo: float, hi: float, lo_open: bool = False,
                 why: str = "") -> None:
    """``value`` must be finite and in range; else a :class:`ConfigError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} = {value} is not a finite number; it must be "
                          f"{describe_range(lo, hi, lo_open)}")
    if value < lo or (lo_open and value == lo) or value > hi:
        raise ConfigError(f"{where} = {_text(value)} is out of range: it must be "
                          f"{describe_range(lo, hi, lo_open)}" + (f" ({why})" if why else ""))


def check_field(f: dataclasses.Field, value, where: str) -> None:
    """The range of ``f`` (declared with :func:`bounded`) for ``value``."""
    spec = f.metadata.get("range")
    if spec is None or value is None:
        return
    lo, hi, lo_open, items, why = spec
    if items:
        for i, v in enumerate(value):
            check_number(v, f"{where}[{i}]", lo, hi, lo_open, why)
    else:
        check_number(value, where, lo, hi, lo_open, why)


def check_text(value: str, where: str, max_length: int = 4096) -> None:
    """Any string of a config: no NUL or other control character, not absurdly long."""
    if "\x00" in value or any(ord(c) < 32 and c not in "\t" for c in value):
        raise ConfigError(f"{where} contains a control character (e.g. a NUL byte): "
                          f"{value[:40]!r}")
    if len(value) > max_length:
        raise ConfigError(f"{where} is {len(value)} characters long; at most {max_length}")


def check_name(name: str, where: str, what: str = "run name") -> None:
    """A name used as a folder name on every common file system."""
    if not name:
        raise ConfigError(f"{where} needs a {what}")
    bad = _NAME_BAD.search(name)
    if bad or name.startswith((".", " ")) or name.endswith((" ", ".")):
        shown = repr(bad.group()) if bad else "a leading dot or space, or a trailing one"
        raise ConfigError(f"{where}: {what} {name[:40]!r} must be usable as a folder name "
                          f"(it has {shown}; no control characters, / \\ : * ? \" < > |, "
                          "leading dot or space)")
    if len(name.encode("utf-8")) > MAX_NAME:
        raise ConfigError(f"{where}: {what} {name[:40]!r}... is {len(name.encode('utf-8'))} "
                          f"bytes long; at most {MAX_NAME}")


def check_class_names(names: list[str], where: str) -> None:
    """Non-empty, unique names."""
    if not names:
        raise ConfigError(f"{where}: the class list is empty; give the class folder names in "
                          "the model's output order")
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            raise ConfigError(f"{where}: a class name is blank")
        if name in seen:
            raise ConfigError(f"{where}: class {name!r} is listed twice")
        seen.add(name)
