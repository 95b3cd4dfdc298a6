"""Build a model from a name: ``torchvision:NAME``, ``conceptevo:NAME`` or
``package.module:function``.

torchvision models are built with ``weights=None`` (random initialisation): ConceptEvo never
downloads weights; the checkpoints of the study supply them.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError

_BUILTIN: dict[str, Callable[..., nn.Module]] = {}
#: namespaces whose models are built without running code a study names
BUILTIN_NAMESPACES = ("torchvision", "conceptevo")


def register(name: str):
    """Decorator adding a factory to the ``conceptevo:`` namespace."""
    def deco(fn):
        _BUILTIN[name] = fn
        return fn
    return deco


def builtin_models() -> list[str]:
    from ..data import models  # noqa: F401  (registers the demo models)
    return sorted(_BUILTIN)


def build_model(arch: str, kwargs: dict | None = None, allow_code: bool = True) -> nn.Module:
    """Instantiate ``arch`` with ``kwargs``.

    Parameters
    ----------
    arch : ``"torchvision:resnet18"``, ``"conceptevo:small_vgg"`` or ``"mypkg.models:build"``.
    kwargs : keyword arguments of the constructor / factory (e.g. ``{"num_classes": 10}``).
    allow_code : False refuses a ``package.module:function`` factory (importing it runs its
        code): for a configuration read from a workspace, which may come from anyone.
    """
    kwargs = dict(kwargs or {})
    if not isinstance(arch, str) or ":" not in arch:
        raise ConfigError(f"architecture {arch!r} must look like \"torchvision:resnet18\", "
                          "\"conceptevo:small_vgg\" or \"package.module:function\"")
    namespace, name = arch.split(":", 1)
    if not allow_code and namespace not in BUILTIN_NAMESPACES:
        raise ConfigError(
            f"the workspace's study.json names the model factory {arch!r}; ConceptEvo runs no "
            "code that a workspace names. Give your own study config instead (e.g. "
            "`conceptevo evaluate study.toml`), whose factory you trust")
    if namespace == "torchvision":
        import torchvision

        available = torchvision.models.list_models()
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"torchvision has no model {name!r}{hint}")
        if kwargs.get("weights") not in (None, "None"):
            raise ConfigError(f"{arch}: weights are read from your checkpoints; remove "
                              "`weights` from kwargs (ConceptEvo downloads nothing)")
        kwargs["weights"] = None
        if name == "inception_v3":
            kwargs.setdefault("init_weights", True)
        return _call(torchvision.models.get_model, arch, name, **kwargs)
    if namespace == "conceptevo":
        available = builtin_models()
        if name not in _BUILTIN:
            raise ConfigError(f"ConceptEvo has no model {name!r}; it has {', '.join(available)}")
        return _call(_BUILTIN[name], arch, **kwargs)
    try:
        module = importlib.import_module(namespace)
    except ImportError as e:
        raise ConfigError(f"cannot import {namespace!r} for architecture {arch!r}: {e}. "
                          "Is the package installed, or its directory on PYTHONPATH?") from None
    except Exception as e:  # SyntaxError or any error raised while the module runs
        raise ConfigError(f"importing {namespace!r} for architecture {arch!r} failed: "
                          f"{_one_line(e)}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"{namespace!r} has no callable {name!r} (architecture {arch!r})")
    model = _call(factory, arch, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{arch} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    where = ""
    if isinstance(error, SyntaxError) and error.filename:
        where = f" ({error.filename}, line {error.lineno})"
    return f"{type(error).__name__}: {lines[0] if lines else ''}{where}"


def _call(fn, arch: str, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot build {arch} with arguments {kwargs}: {e}") from None
    except Exception as e:  # the factory's own error, named with its message
        raise ConfigError(f"the model factory {arch} raised {_one_line(e)} (arguments "
                          f"{kwargs})") from None
