"""A built-in architecture's options model, read from its file without importing torch.

Every architecture file imports torch (its model is an nn.Module), which costs most of a
command's start-up (~2.5 s of ~3 s on a 2-core EPYC). A config error on an architecture's
own key (`sae: {arch: relu, k: 8}`) should not wait for that when one anywhere else does not.
The file stays the one place an architecture is written; this module runs the part of it that
makes the options model:

- imports, of modules already loaded or of the standard library only (so never torch, nor
  sae.models.base); `from sae.models.architectures.X import Y` takes Y from X read the same way;
- undecorated classes and functions, and assignments, each kept only if it runs (a statement
  that needs a name the skipped imports would have bound raises NameError and is dropped);
- never a decorated definition: the model class, `@register_architecture`, is left alone.

That is a subset of what importing the file runs, so nothing happens here that the import
would not do. The model class's `Options = X` names the class to take. When that class cannot
be built this way (say its body needs torch) the answer is None and the caller imports the
file, so a config is never judged differently, at worst more slowly.
"""

from __future__ import annotations
import __future__

import ast
import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from sae.config import ArchitectureOptions
from sae.models import architectures

PACKAGE = architectures.__name__
_READING: set[str] = set()  # files being read, so that a cycle of imports ends
_NAMESPACES: dict[str, dict[str, Any]] = {}


def source_options(name: str) -> type[ArchitectureOptions] | None:
    """The options model of built-in architecture `name` built from its source, or None."""
    path = _file(name)
    return None if path is None else options_from_file(path)


def options_from_file(path: Path) -> type[ArchitectureOptions] | None:
    """The options model an architecture file registers, built from its source, or None.
    Its imports from sibling architectures are read from the built-in ones."""
    tree = ast.parse(path.read_text(), filename=str(path))
    options = _options_expression(tree)
    if options is None:
        return None
    try:
        namespace = _namespace(path.stem, path)
        found = eval(compile(ast.Expression(options), str(path), "eval"), namespace)  # noqa: S307
    except Exception:
        return None
    if not (isinstance(found, type) and issubclass(found, ArchitectureOptions)):
        return None
    return found if found.__pydantic_complete__ else None


def _file(name: str) -> Path | None:
    path = Path(architectures.__path__[0]) / f"{name}.py"
    return path if name.isidentifier() and path.is_file() else None


def _options_expression(tree: ast.Module) -> ast.expr | None:
    """`X` of `Options = X` in the body of the class decorated with register_architecture."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(map(_is_register, node.decorator_list)):
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and len(statement.targets) == 1
                    and isinstance(statement.targets[0], ast.Name)
                    and statement.targets[0].id == "Options"
                ):
                    return statement.value
    return None


def _is_register(decorator: ast.expr) -> bool:
    name = decorator.attr if isinstance(decorator, ast.Attribute) else getattr(decorator, "id", "")
    return name == "register_architecture"


def _namespace(name: str, path: Path | None) -> dict[str, Any]:
    """The namespace of architecture file `path` as far as it builds without new imports."""
    key = str(path)
    if key in _NAMESPACES:
        return _NAMESPACES[key]
    namespace: dict[str, Any] = {"__name__": f"{PACKAGE}.{name}", "__builtins__": __builtins__}
    if path is None or key in _READING:
        return namespace
    _READING.add(key)
    try:
        body = ast.parse(path.read_text(), filename=key).body
        flags = _future_flags(body)
        for node in body:
            _run(node, namespace, key, flags)
    finally:
        _READING.discard(key)
    _NAMESPACES[key] = namespace
    return namespace


def _future_flags(body: list[ast.stmt]) -> int:
    """The file's `from __future__` imports, so that its statements compile as in the file."""
    flags = 0
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                flags |= getattr(__future__, alias.name).compiler_flag
    return flags


def _run(node: ast.stmt, namespace: dict[str, Any], filename: str, flags: int) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            _bind_import(alias, namespace)
    elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
        module = importlib.util.resolve_name("." * node.level + (node.module or ""), PACKAGE)
        for alias in node.names:
            _bind_from(module, alias, namespace)
    elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        if not node.decorator_list:
            _try(node, namespace, filename, flags)
    elif isinstance(node, ast.Assign | ast.AnnAssign):
        _try(node, namespace, filename, flags)


def _try(node: ast.stmt, namespace: dict[str, Any], filename: str, flags: int) -> None:
    code = compile(ast.Module([node], type_ignores=[]), filename, "exec", flags, dont_inherit=True)
    # a statement that fails needs what was not imported: the real import will run it
    with contextlib.suppress(Exception):
        exec(code, namespace)  # noqa: S102


def _loadable(module: str) -> bool:
    """Whether importing `module` here costs nothing new: loaded already, or the stdlib."""
    return module in sys.modules or module.partition(".")[0] in sys.stdlib_module_names


def _bind_import(alias: ast.alias, namespace: dict[str, Any]) -> None:
    if not _loadable(alias.name):
        return
    module = importlib.import_module(alias.name)
    if alias.asname:
        namespace[alias.asname] = module
    else:
        top = alias.name.partition(".")[0]
        namespace[top] = sys.modules[top]


def _bind_from(module: str, alias: ast.alias, namespace: dict[str, Any]) -> None:
    bound = alias.asname or alias.name
    if module.startswith(f"{PACKAGE}.") and module.count(".") == PACKAGE.count(".") + 1:
        sibling_name = module.rpartition(".")[2]
        sibling = _namespace(sibling_name, _file(sibling_name))
        if alias.name in sibling:
            namespace[bound] = sibling[alias.name]
    elif _loadable(module) and alias.name != "*":
        found = getattr(importlib.import_module(module), alias.name, None)
        if found is not None:  # a submodule not yet loaded is not imported here
            namespace[bound] = found
