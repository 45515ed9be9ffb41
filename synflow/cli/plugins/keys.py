"""The ``plugin_args`` keys a Nipype plugin reads, found in the installed Nipype's source.

Nipype silently ignores keys its plugins do not read, so a typo (``sbatch_arg``) would be
dropped without a word.  Instead of a copy of one Nipype version's keys, the plugin class
and its base classes are parsed (:mod:`ast`) for ``plugin_args["key"]``,
``plugin_args.get("key")`` and ``"key" in plugin_args`` -- on ``plugin_args``,
``self.plugin_args`` or ``kwargs["plugin_args"]``, not a node's own ``node.plugin_args`` --
so any Nipype from 1.8 on gets its own keys.  Keys read through a loop over names
(:data:`~synflow.cli.plugins.table.EXTRA_KEYS`) are added when that literal name appears
in the plugin's source.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap

from synflow.cli.plugins.table import EXTRA_KEYS, nipype_plugin_class

__all__ = ["plugin_keys", "plugin_source"]


def _class_sources(name: str) -> list[str]:
    """Sources of Nipype's ``<name>Plugin`` and of its base classes."""
    cls = nipype_plugin_class(name)
    if cls is None:
        return []
    parts = []
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            parts.append(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # pragma: no cover - no source shipped
            continue
    return parts


def plugin_source(name: str) -> str:
    """Source of Nipype's ``<name>Plugin`` and of its Nipype base classes ("" if none)."""
    return "\n".join(_class_sources(name))


def _is_run_args(node: ast.AST) -> bool:
    """``plugin_args``, ``self.plugin_args`` or ``kwargs["plugin_args"]``."""
    if isinstance(node, ast.Name):
        return node.id == "plugin_args"
    if isinstance(node, ast.Attribute):
        return (node.attr == "plugin_args" and isinstance(node.value, ast.Name)
                and node.value.id == "self")
    if isinstance(node, ast.Subscript):
        return _literal(node.slice) == "plugin_args"
    return False


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) \
        else None


def _key_of(node: ast.AST) -> str | None:
    """The key a ``plugin_args`` access reads, or None."""
    if isinstance(node, ast.Subscript) and _is_run_args(node.value):
        return _literal(node.slice)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get" and _is_run_args(node.func.value) and node.args):
        return _literal(node.args[0])
    if (isinstance(node, ast.Compare) and len(node.ops) == 1
            and isinstance(node.ops[0], ast.In) and _is_run_args(node.comparators[0])):
        return _literal(node.left)
    return None


@functools.cache
def plugin_keys(name: str) -> frozenset[str]:
    """Every ``plugin_args`` key Nipype's ``<name>Plugin`` (or a base class) reads."""
    keys: set[str] = set()
    for part in _class_sources(name):
        tree = ast.parse(part)
        keys.update(k for node in ast.walk(tree) if (k := _key_of(node)) is not None)
    source = plugin_source(name)
    keys.update(k for k in EXTRA_KEYS.get(name, ()) if f'"{k}"' in source or f"'{k}'" in source)
    return frozenset(keys - {"plugin_args"})
