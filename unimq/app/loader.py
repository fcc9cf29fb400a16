"""Find the App a ``module:attribute`` string names (what ``unimq run`` and ``unimq docs`` take)."""

from __future__ import annotations

import importlib
import os
import sys

from unimq.errors import ConfigError, UnimqError

from .core import App


def load_app(target: str) -> App:
    """Import ``module`` from ``module:attribute`` (the working directory first on the path) and
    return its App. Anything wrong is one ConfigError line naming the target."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{target!r} is not module:app (e.g. myservice.main:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"cannot import {module_name!r} (from {target!r}): no module named {exc.name!r}; "
                              "run from the directory that contains it, or set PYTHONPATH") from None
        raise ConfigError(f"importing {module_name!r} failed: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{target}: {exc}") from None
    except UnimqError:
        raise
    except Exception as exc:
        raise ConfigError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    app = module
    for part in attribute.split("."):
        if not hasattr(app, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}")
        app = getattr(app, part)
    if not isinstance(app, App):
        raise ConfigError(f"{target!r} is a {type(app).__name__}, not a unimq.App")
    return app
