"""Rewrite the imports of a DIPY test file so that it tests synflow's mirrored modules.

Only ``import`` statements are rewritten (anywhere in the file, also inside functions);
the test code itself is DIPY's, unchanged.  A name is taken from synflow only where
synflow mirrors it (:data:`MIRRORED_MODULES`, and the package-level names that
``synflow.align`` exports); everything else (``floating``, ``vector_fields``,
``dipy.core``, ``dipy.data``, ``dipy.testing``, other DIPY test modules ...) stays DIPY's.
``synflow.align.vector_fields`` is *not* a DIPY mirror, so ``vector_fields`` stays DIPY's.
"""

from __future__ import annotations

import ast
import importlib

#: DIPY module -> the synflow module that mirrors its public API.
MIRRORED_MODULES: dict[str, str] = {
    "dipy.align.imwarp": "synflow.align.imwarp",
    "dipy.align.imaffine": "synflow.align.imaffine",
    "dipy.align.metrics": "synflow.align.metrics",
    "dipy.align.transforms": "synflow.align.transforms",
    "dipy.align.reslice": "synflow.align.reslice",
    "dipy.align.scalespace": "synflow.align.scalespace",
    "dipy.segment.mask": "synflow.segment.mask",
    "dipy.segment.threshold": "synflow.segment.threshold",
    "dipy.viz.regtools": "synflow.viz.regtools",
}

#: DIPY packages whose package-level names synflow mirrors (where synflow exports them).
MIRRORED_PACKAGES: dict[str, str] = {"dipy.align": "synflow.align"}


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def package_names(synflow_pkg: str) -> set[str]:
    """The package-level names ``synflow_pkg`` offers (its ``__all__``)."""
    mod = importlib.import_module(synflow_pkg)
    return set(getattr(mod, "__all__", ()))


def _target_of(dipy_module: str, name: str) -> str | None:
    """The synflow module to import ``name`` from, for ``from dipy_module import name``."""
    if dipy_module in MIRRORED_MODULES:
        return MIRRORED_MODULES[dipy_module]
    sub = f"{dipy_module}.{name}"
    if sub in MIRRORED_MODULES:  # ``from dipy.align import imwarp``
        return dipy_module.replace("dipy", "synflow", 1)
    pkg = MIRRORED_PACKAGES.get(dipy_module)
    if pkg is not None and name in package_names(pkg):
        return pkg
    return None


def _split_import_from(node: ast.ImportFrom) -> list[ast.stmt]:
    """One ``from dipy... import a, b`` -> a synflow statement and/or a DIPY one."""
    if node.level or not node.module or not node.module.startswith("dipy"):
        return [node]
    groups: dict[str, list[ast.alias]] = {}
    for alias in node.names:
        target = _target_of(node.module, alias.name) if alias.name != "*" else None
        groups.setdefault(target or node.module, []).append(alias)
    return [
        ast.copy_location(ast.ImportFrom(module=mod, names=names, level=0), node)
        for mod, names in groups.items()
    ]


def _rewrite_import(node: ast.Import) -> list[ast.stmt]:
    """``import dipy.align.imwarp as imwarp`` -> ``import synflow.align.imwarp as imwarp``.

    Only aliased imports are rewritten: an unaliased ``import dipy.x.y`` binds ``dipy``,
    which the test then uses as DIPY's package.
    """
    names = []
    for alias in node.names:
        if alias.asname and alias.name in MIRRORED_MODULES:
            alias = ast.alias(name=MIRRORED_MODULES[alias.name], asname=alias.asname)
        names.append(alias)
    return [ast.copy_location(ast.Import(names=names), node)]


#: Prepended to every rewritten file: a stand-in for a name synflow does not offer yet.
_MISSING_HELPER = '''
class _SynflowMissing:
    """A name synflow does not mirror: any use raises ImportError with the reason."""

    def __init__(self, qualname, reason):
        self._qualname, self._reason = qualname, reason

    def _fail(self, *args, **kwargs):
        raise ImportError(f"synflow does not offer {self._qualname}: {self._reason}")

    __call__ = _fail

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._fail()
'''


def _guarded(node: ast.ImportFrom) -> list[ast.stmt]:
    """A module-level synflow import, one name at a time, each missing name a stand-in.

    A single name synflow lacks then fails only the tests that use it, not the whole file.
    """
    out: list[ast.stmt] = []
    for alias in node.names:
        bound = alias.asname or alias.name
        qual = f"{node.module}.{alias.name}"
        code = (
            f"try:\n    from {node.module} import {alias.name} as {bound}\n"
            f"except ImportError as _err:\n"
            f"    {bound} = _SynflowMissing({qual!r}, str(_err))\n"
        )
        out.extend(ast.parse(code).body)
    return [ast.copy_location(n, node) for n in out]


class _ImportRewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.depth = 0

    def _nested(self, node: ast.AST) -> ast.AST:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested  # noqa: N815

    def visit_ImportFrom(self, node: ast.ImportFrom):  # noqa: N802 (ast API)
        out: list[ast.stmt] = []
        for stmt in _split_import_from(node):
            synflow = isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith(
                "synflow")
            out.extend(_guarded(stmt) if synflow and self.depth == 0 else [stmt])
        return out

    def visit_Import(self, node: ast.Import):  # noqa: N802 (ast API)
        return _rewrite_import(node)


def rewrite_source(source: str) -> str:
    """DIPY test source with its imports pointed at synflow where synflow mirrors them."""
    tree = _ImportRewriter().visit(ast.parse(source))
    return _MISSING_HELPER + "\n\n" + ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def missing_mirrors() -> list[str]:
    """Mirrored synflow modules that do not import (their tests then fail at collection)."""
    return [m for m in MIRRORED_MODULES.values() if not _available(m)]
