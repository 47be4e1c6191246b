#!/usr/bin/env python3
"""Mutation testing of the Python SDK's resume and protocol code against its unittests.

Why not mutmut: mutmut 3 swaps functions through trampolines that need its pytest plugin in the test
process, while the SDK's tests run each training loop in a real subprocess (to send it real signals
and see its real exit codes); there every mutant exits 1 at import and counts as killed (measured
with mutmut 3.3.1 and pytest 8.3.5). This runner applies the same kinds of mutation with Python's own
`ast`, one mutant at a time, to a copy of the SDK, and runs its whole unittest suite against each.

Operators: comparison flips (== !=, < >=, > <=, in / not in, is / is not), `and`/`or` swaps, dropped
`not`, integer constants n -> n + 1, True/False swaps, `+`/`-` swaps, and `return X` -> `return None`.
String constants (messages) are not mutated.

    python3 scripts/sdk_mutants.py            # prints each survivor and a summary; exit 1 if any survive
"""

import ast
import copy
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SDK = os.path.join(ROOT, "sdk", "python")
FILES = os.environ.get("SDK_MUTANTS_FILES", "src/trainerd/run.py src/trainerd/checkpoint.py src/trainerd/progress.py").split()
# The interpreter the suite runs under: the system python3 (no torch: checkpoints are pickles), or
# SDK_MUTANTS_PYTHON=.venv/bin/python to reach the torch branches too (slower: torch loads per test).
PYTHON = os.environ.get("SDK_MUTANTS_PYTHON", sys.executable)
FLIPS = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}


def sites(tree):
    """Every (node, description) that can be mutated, in a stable order."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant):
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in FLIPS:
                    found.append((node, ("compare", i), f"{type(op).__name__} -> {FLIPS[type(op)].__name__}"))
        elif isinstance(node, ast.BoolOp):
            found.append((node, ("boolop",), "and <-> or"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append((node, ("not",), "drop not"))
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            found.append((node, ("bool",), f"{node.value} -> {not node.value}"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            found.append((node, ("int",), f"{node.value} -> {node.value + 1}"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            found.append((node, ("binop",), "+ <-> -"))
        elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ):
            found.append((node, ("return",), "return None"))
    return found


def mutate(node, how):
    kind = how[0]
    if kind == "compare":
        node.ops[how[1]] = FLIPS[type(node.ops[how[1]])]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "not":
        return node.operand
    elif kind == "bool":
        node.value = not node.value
    elif kind == "int":
        node.value = node.value + 1
    elif kind == "binop":
        node.op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
    elif kind == "return":
        node.value = ast.Constant(value=None)
    return node


class Replace(ast.NodeTransformer):
    def __init__(self, target, how):
        self.target, self.how = target, how

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if node is self.target:
            return mutate(node, self.how)
        return node


def run_suite(tree_dir):
    try:
        out = subprocess.run(
            [PYTHON, "-m", "unittest", "discover", "-s", os.path.join(tree_dir, "tests")],
            capture_output=True, timeout=120,
        )
        return out.returncode == 0
    except subprocess.TimeoutExpired:
        return False


def main():
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = os.path.join(tmp, "sdk")
        shutil.copytree(SDK, copy_dir, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        if not run_suite(copy_dir):
            sys.exit("sdk_mutants: the SDK's tests fail without any mutation; fix them first")
        total, survivors = 0, []
        for rel in FILES:
            path = os.path.join(copy_dir, rel)
            with open(path) as f:
                source = f.read()
            base = ast.parse(source)
            for index in range(len(sites(base))):
                tree = copy.deepcopy(base)
                node, how, what = sites(tree)[index]
                line = getattr(node, "lineno", 0)
                mutated = Replace(node, how).visit(tree)
                ast.fix_missing_locations(mutated)
                with open(path, "w") as f:
                    f.write(ast.unparse(mutated))
                total += 1
                if run_suite(copy_dir):
                    survivors.append(f"{rel}:{line}: {what}")
                    print(f"SURVIVED {rel}:{line}: {what}", flush=True)
                with open(path, "w") as f:
                    f.write(source)
        print(f"sdk mutants: {total} tried, {total - len(survivors)} killed, {len(survivors)} survived")
        sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
