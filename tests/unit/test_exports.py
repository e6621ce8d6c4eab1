"""Public API: each public module's ``__all__`` is sorted and lists exactly its public names."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import types
import typing

import pytest

import catga
import catga.exceptions
import catga.typing

PUBLIC_MODULES = [catga, catga.exceptions, catga.typing]


def _defined_names(module: types.ModuleType) -> set[str]:
    """Public names a module binds at top level itself (classes, functions, aliases)."""
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {
        name
        for name in names
        if not name.startswith("_") and not isinstance(getattr(module, name), typing.TypeVar)
    }


def _package_names(package: types.ModuleType) -> set[str]:
    """Public names in a package's namespace (what it imported to re-export, and submodules)."""
    return {
        name
        for name, value in vars(package).items()
        # `from __future__ import annotations` binds a feature object, not an export.
        if not name.startswith("_") and type(value).__module__ != "__future__"
    }


_TREE_LINE = re.compile(r"^(?P<indent>[\s│]*)[├└]── (?P<name>\w+)(?: \((?P<bases>[\w, ]+)\))?")


def _drawn_tree() -> list[tuple[str, str, list[str]]]:
    """(class, drawn parent, drawn builtin bases) for each line of the exceptions docstring."""
    lines = (catga.exceptions.__doc__ or "").splitlines()
    root = next(line for line in lines if line.strip() == "CatgaError")
    margin = len(root) - len(root.lstrip())
    parents = ["CatgaError"]
    rows: list[tuple[str, str, list[str]]] = []
    for line in lines:
        match = _TREE_LINE.match(line)
        if match is None:
            continue
        depth = (len(match["indent"]) - margin) // 4
        del parents[depth + 1 :]
        bases = [b.strip() for b in (match["bases"] or "").split(",") if b.strip()]
        rows.append((match["name"], parents[depth], bases))
        parents.append(match["name"])
    return rows


class TestExports:
    @pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
    def test_all_is_sorted_and_unique(self, module: types.ModuleType) -> None:
        """__all__ is sorted, without duplicates."""
        assert module.__all__ == sorted(set(module.__all__))

    def test_package_exports_every_public_name(self) -> None:
        """catga.__all__ is exactly the public names in catga's namespace."""
        assert catga.__all__ == sorted(_package_names(catga))

    @pytest.mark.parametrize("module", PUBLIC_MODULES[1:], ids=lambda m: m.__name__)
    def test_module_exports_every_name_it_defines(self, module: types.ModuleType) -> None:
        """A public submodule's __all__ is exactly the public names it defines."""
        assert module.__all__ == sorted(_defined_names(module))

    @pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
    def test_every_export_exists(self, module: types.ModuleType) -> None:
        """Every name in __all__ is importable from the module."""
        assert [name for name in module.__all__ if not hasattr(module, name)] == []


class TestExceptions:
    def test_every_exception_is_a_catga_error(self) -> None:
        """Every exception catga.exceptions exports derives from CatgaError."""
        for name in catga.exceptions.__all__:
            assert issubclass(getattr(catga.exceptions, name), catga.exceptions.CatgaError), name
        assert catga.CatgaError is catga.exceptions.CatgaError

    def test_tree_in_the_docstring_matches_the_classes(self) -> None:
        """The tree drawn in catga/exceptions.py is the real hierarchy, builtins included."""
        rows = _drawn_tree()
        assert {name for name, _, _ in rows} | {"CatgaError"} == set(catga.exceptions.__all__)
        for name, parent, bases in rows:
            error = getattr(catga.exceptions, name)
            assert issubclass(error, getattr(catga.exceptions, parent)), (name, parent)
            for base in bases:
                assert issubclass(error, getattr(builtins, base)), (name, base)
