"""Lines per module, the longest functions and the imports between the package's layers.

    python3 tools/code_report.py [package folder]

Reads the code as text (nothing is imported or run). Every import counts, lazy ones inside
functions too; a module cycle or an import against the layer order (tests/test_layers.py) is listed.
"""
from __future__ import annotations

import ast
import collections
import pathlib
import sys

BRANCHES = (ast.If, ast.For, ast.While, ast.Try, ast.IfExp, ast.BoolOp, ast.comprehension, ast.ExceptHandler)


def module_name(path: pathlib.Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: pathlib.Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative and absolute, at any depth)."""
    modules = {module_name(p.relative_to(root.parent)): p for p in root.rglob("*.py")}
    edges = collections.defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for candidate in [target] + [f"{target}.{a.name}" for a in node.names]:
                if candidate in modules and candidate != name:
                    edges[name].add(candidate)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def main(root="noisecorr_app", top: int = 15):
    root = pathlib.Path(root)
    modules, functions = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        modules.append((len(text.splitlines()), str(path)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                branches = sum(isinstance(x, BRANCHES) for x in ast.walk(node))
                functions.append((node.end_lineno - node.lineno + 1, branches, f"{path}:{node.lineno} {node.name}"))
    print(f"modules: {len(modules)}, lines: {sum(m[0] for m in modules)}")
    for n, p in sorted(modules, reverse=True)[:top]:
        print(f"  {n:5d}  {p}")
    print("longest functions (lines, branch points):")
    for n, b, name in sorted(functions, reverse=True)[:top]:
        print(f"  {n:4d} {b:3d}  {name}")
    print(f"functions over 60 lines: {sum(f[0] > 60 for f in functions)}, over 40: {sum(f[0] > 40 for f in functions)}")
    print("module cycles:", cycles(imports(root)) or "none")


if __name__ == "__main__":
    main(*sys.argv[1:])
