"""The error tree drawn in features/errors.py is the real one: every BypassError subclass is
in it, under its real parent."""

from __future__ import annotations

import importlib
import pkgutil
import re

import features.errors as errors


def _import_everything() -> None:
    for package in ("features", "rules", "sinks", "streams"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def test_every_error_is_drawn_under_its_parent() -> None:
    _import_everything()
    doc = errors.__doc__ or ""
    lines = [line for line in doc.splitlines() if re.search(r"[├└]── \w+", line) or "BypassError  " in line]
    depth = {}
    for line in lines:
        name = re.search(r"(\w+Error)", line)
        assert name is not None
        depth[name.group(1)] = line.index(name.group(1))
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        name = re.search(r"(\w+Error)", line).group(1)  # type: ignore[union-attr]
        while stack and stack[-1][0] >= depth[name]:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth[name], name))
    real = {c.__name__: c.__mro__[1].__name__ for c in _subclasses(errors.BypassError)}
    missing = sorted(set(real) - set(parents))
    assert not missing, f"errors not drawn in features/errors.py: {missing}"
    wrong = {n: (parents[n], p) for n, p in real.items() if parents[n] != p}
    assert not wrong, f"drawn under the wrong parent (drawn, real): {wrong}"
