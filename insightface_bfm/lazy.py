"""Package namespaces whose names load on first use (PEP 562), so that importing a package costs
nothing until one of its names is needed: ``import insightface_bfm`` never imports torch or
insightface, ``bfm export --help`` works without torch."""

from __future__ import annotations

from importlib import import_module


def lazy_names(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package`` whose public ``exports`` map name -> module
    (absolute, or relative to ``package``); a loaded name is kept in the package's globals."""
    import sys

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
