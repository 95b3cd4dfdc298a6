"""Build a model from a name: ``torchvision:NAME``, ``timm:NAME``, ``hf:MODEL_TYPE``,
``hf:PATH``, ``conceptevo:NAME`` or ``package.module:function``.

Every model is built with random weights and nothing is downloaded: the checkpoints of the
study supply the weights.

* ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, **kwargs)``.
* ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, **kwargs)`` (``pip install
  conceptevo[timm]``). Hub and local-directory sources (``hf-hub:``, ``local-dir:``) and the
  arguments that load weights (``pretrained``, ``pretrained_cfg``, ``checkpoint_path``) are
  refused.
* ``hf:MODEL_TYPE`` (``hf:vit``, ``hf:deit``, ``hf:swin``, ``hf:convnext``, ...): a Hugging Face
  image classifier, ``AutoModelForImageClassification.from_config(AutoConfig.for_model(
  MODEL_TYPE, **kwargs))`` (``pip install conceptevo[hf]``); ``num_classes`` is accepted for
  ``num_labels``. ``hf:PATH``: the configuration in a local ``config.json`` (or a directory
  holding one, as ``save_pretrained`` writes it), ``kwargs`` overriding its values. A PATH
  contains a ``/`` or ends with ``.json`` (``hf:./vit`` for a directory named ``vit``); a
  relative one starts at the current directory. No code is ever fetched or run from a
  configuration (``trust_remote_code`` stays off).

``timm:`` and ``hf:`` are built-in namespaces: they import no code that a study names.
"""

from __future__ import annotations

import difflib
import importlib
import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import ConfigError

#: the ``conceptevo:`` namespace: name -> class in :mod:`conceptevo.data.models`
_BUILTIN: dict[str, str] = {"small_vgg": "SmallVGG", "small_resnet": "SmallResNet",
                            "small_vit": "SmallViT"}
#: namespaces whose models are built without running code a study names
BUILTIN_NAMESPACES = ("torchvision", "conceptevo", "timm", "hf")
#: timm arguments that load weights or configurations from elsewhere
_TIMM_REFUSED = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                 "pretrained_strict")
#: arguments of a Hugging Face configuration that would fetch or run code
_HF_REFUSED = ("trust_remote_code", "revision", "token", "cache_dir", "force_download",
               "local_files_only", "auto_map", "code_revision")


def builtin_models() -> list[str]:
    return sorted(_BUILTIN)


def _builtin(name: str) -> Callable[..., nn.Module]:
    from ..data import models

    return getattr(models, _BUILTIN[name])


def build_model(arch: str, kwargs: dict | None = None, allow_code: bool = True) -> nn.Module:
    """Instantiate ``arch`` with ``kwargs``.

    Parameters
    ----------
    arch : ``"torchvision:resnet18"``, ``"timm:convnext_tiny"``, ``"hf:vit"``,
        ``"hf:path/to/config.json"``, ``"conceptevo:small_vgg"`` or ``"mypkg.models:build"``.
    kwargs : keyword arguments of the constructor / factory (e.g. ``{"num_classes": 10}``).
    allow_code : False refuses a ``package.module:function`` factory (importing it runs its
        code): for a configuration read from a workspace, which may come from anyone.
    """
    kwargs = dict(kwargs or {})
    if not isinstance(arch, str) or ":" not in arch:
        raise ConfigError(f"architecture {arch!r} must look like \"torchvision:resnet18\", "
                          "\"timm:convnext_tiny\", \"hf:vit\", \"conceptevo:small_vgg\" or "
                          "\"package.module:function\"")
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
    if namespace == "timm":
        return _timm_model(arch, name, kwargs)
    if namespace == "hf":
        return _hf_model(arch, name, kwargs)
    if namespace == "conceptevo":
        if name not in _BUILTIN:
            raise ConfigError(f"ConceptEvo has no model {name!r}; it has "
                              f"{', '.join(builtin_models())}")
        return _call(_builtin(name), arch, **kwargs)
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


def _timm_model(arch: str, name: str, kwargs: dict) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``, downloading nothing."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"{arch} needs timm: pip install conceptevo[timm] (or pip install "
                          "timm)") from None
    if ":" in name or "/" in name:
        raise ConfigError(f"{arch}: timm's hub and directory sources (hf-hub:, local-dir:) "
                          "fetch configurations from elsewhere; name a timm architecture, "
                          "e.g. timm:vit_small_patch16_224 (the weights come from your "
                          "checkpoints)")
    if kwargs.pop("pretrained", False) not in (False, None, "False", "false", 0):
        raise ConfigError(f"{arch}: weights are read from your checkpoints; remove "
                          "`pretrained` from kwargs (ConceptEvo downloads nothing)")
    refused = [k for k in _TIMM_REFUSED if k in kwargs]
    if refused:
        raise ConfigError(f"{arch}: remove {', '.join(refused)} from kwargs; they load weights "
                          "or configurations from elsewhere, and ConceptEvo reads the weights "
                          "from your checkpoints (it downloads nothing)")
    if not timm.is_model(name):
        available = timm.list_models()
        close = difflib.get_close_matches(name.split(".", 1)[0], available, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            " (timm.list_models() lists them)"
        raise ConfigError(f"timm {timm.__version__} has no model {name!r}{hint}")
    return _call(timm.create_model, arch, name, pretrained=False, **kwargs)


def _is_config_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.endswith(".json") or name.startswith(("~", "."))


def _hf_model(arch: str, name: str, kwargs: dict) -> nn.Module:
    """A Hugging Face image classifier from a model type or a local config (see the module
    docstring), with random weights."""
    try:
        import transformers
        from transformers import AutoConfig, AutoModelForImageClassification
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS,
        )
    except ImportError:
        raise ConfigError(f"{arch} needs transformers: pip install conceptevo[hf] (or pip "
                          "install transformers)") from None
    refused = [k for k in _HF_REFUSED if k in kwargs]
    if refused:
        raise ConfigError(f"{arch}: remove {', '.join(refused)} from kwargs; ConceptEvo builds "
                          "Hugging Face models from a local configuration only, never fetching "
                          "or running code")
    if "num_classes" in kwargs:
        if "num_labels" in kwargs:
            raise ConfigError(f"{arch}: give num_labels or num_classes, not both")
        kwargs["num_labels"] = kwargs.pop("num_classes")
    if _is_config_path(name):
        config = _hf_config_file(arch, name, kwargs, AutoConfig)
    else:
        if name not in CLASSIFIERS:
            close = difflib.get_close_matches(name, list(CLASSIFIERS), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f"; it has {', '.join(sorted(CLASSIFIERS))}"
            raise ConfigError(f"transformers {transformers.__version__} has no image "
                              f"classification model type {name!r}{hint} (or give the path of "
                              "a config.json: hf:path/to/config.json)")
        default = AutoConfig.for_model(name)
        unknown = [k for k in kwargs if not hasattr(default, k)]
        if unknown:
            options = sorted(k for k in default.to_dict() if not k.startswith("_"))
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, options, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{arch}: the {type(default).__name__} has no option "
                              f"{', '.join(hints)}; its options include "
                              f"{', '.join(options[:40])}")
        config = _call(AutoConfig.for_model, arch, name, **kwargs)
    model_type = getattr(config, "model_type", "")
    if model_type == "timm_wrapper":
        raise ConfigError(f"{arch}: build timm models with timm:NAME")
    if model_type not in CLASSIFIERS:
        raise ConfigError(f"{arch}: model type {model_type!r} has no image classification "
                          f"model in transformers {transformers.__version__}; image "
                          f"classifiers are {', '.join(sorted(CLASSIFIERS))}")
    if getattr(config, "architectures", None) is None:
        # (a model type with several classifiers, e.g. DeiT with or without its distillation
        # head, picks the first; name another with architectures = [...])
        config.architectures = []
    return _call(AutoModelForImageClassification.from_config, arch, config,
                 trust_remote_code=False)


def _hf_config_file(arch: str, name: str, kwargs: dict, auto_config):
    """The configuration of ``config.json`` at ``name`` (a file or a directory holding one)."""
    path = Path(name).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{arch}: no Hugging Face configuration at {file}; give a "
                          "config.json or a directory holding one (as save_pretrained writes "
                          "it), or a model type such as hf:vit")
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read(1 << 22)
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{arch}: {file} is no readable JSON configuration: "
                          f"{_one_line(e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ConfigError(f"{arch}: {file} has no \"model_type\" entry; a Hugging Face "
                          "config.json names its model type (e.g. \"vit\")")
    try:
        config, unused = auto_config.from_pretrained(
            str(file), local_files_only=True, trust_remote_code=False,
            return_unused_kwargs=True, **kwargs)
    except Exception as e:  # an unknown model type, custom code, a malformed value
        raise ConfigError(f"{arch}: transformers cannot read {file}: {_one_line(e)}") from None
    if unused:
        raise ConfigError(f"{arch}: {type(config).__name__} has no option "
                          f"{', '.join(map(repr, unused))} (kwargs)")
    return config


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
