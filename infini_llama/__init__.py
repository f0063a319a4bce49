"""infini-llama: LLaMA language models with Infini-attention, and the tools to study them.

Public API:
    InfiniLlamaConfig, InfiniLlamaForCausalLM, InfiniCache, config_from_preset, PRESETS, parameter_groups
    MemoryState, compressive_memory, compressive_memory_reference, segment_attention (from `infini_llama.ops`)
Importing the package registers model_type "infini_llama" with `AutoConfig` / `AutoModelForCausalLM`.

The names above load on first use (PEP 562), so that `import infini_llama.cli` (the `infini-llama` command, whose
`--help` must be fast) does not import torch. The Auto-class registration happens as soon as `transformers` is
imported, before or after this package: a program that uses the Auto classes has imported transformers by then.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "PRESETS": "infini_llama.models",
    "InfiniCache": "infini_llama.models",
    "InfiniLlamaConfig": "infini_llama.models",
    "InfiniLlamaForCausalLM": "infini_llama.models",
    "config_from_preset": "infini_llama.models",
    "parameter_groups": "infini_llama.models",
    "MemoryState": "infini_llama.ops",
    "compressive_memory": "infini_llama.ops",
    "compressive_memory_reference": "infini_llama.ops",
    "segment_attention": "infini_llama.ops",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'infini_llama' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _register() -> None:
    importlib.import_module("infini_llama.models")  # its import registers the model type with the Auto classes


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds `transformers` with the other finders and registers our model type once its module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # one registration; and the lookup below must not come back here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """A loader that runs `loader` and then `_register`; everything else is `loader`'s."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


if "transformers" in sys.modules:
    _register()
elif not any(isinstance(finder, _RegisterAfterTransformers) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
