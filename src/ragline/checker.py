"""``ragline check``: a static checker for dropped lifetimes, the Python counterpart of
.NET's CA2016 and Go's ``contextcheck``.

It reads source with :mod:`ast` (nothing is imported or run) and reports:

- **RL101** a function that has a lifetime calls one that takes an optional lifetime
  without passing it on: cancelling the caller would not stop the callee. (A required
  one left out is a TypeError that mypy already reports.)
- **RL102** a new root lifetime (``Lifetime.root()``, ``Lifetime(...)``) in a function
  that was handed a lifetime or a request: the work escapes the request's cancellation.
- **RL103** ``detach(...)`` without a ``timeout``: detached work needs a bound of its own.
- **RL104** a shield without a deadline: ``CancelScope(shield=True)`` with no ``deadline``,
  or ``asyncio.shield(...)`` not under ``asyncio.wait_for``.
- **RL105** ``except ThreadCancelled`` that does not re-raise, or
  ``suppress(ThreadCancelled)``: a worker thread that swallows ragline's cancellation runs
  on for nobody.
- **RL106** a blocking call in ``async def`` that flake8-async does not already know:
  SQLite, synchronous psycopg, the Milvus client, directory walks, PDF parsing.

flake8-async covers the rest (a swallowed ``CancelledError``, ``time.sleep``, ``open``,
``subprocess``, blocking HTTP and ``pathlib``), so its rules are not repeated here. A
line ending in ``# noqa: RL1xx`` is skipped. As a flake8 plugin (``--select=RL``) each
file is read alone, so RL101 only knows the callees of that file.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RULES", "Finding", "check_paths", "check_source", "main"]

RULES = {
    "RL101": "{callee}() takes a lifetime and none is passed: pass {lifetime} on, so that "
    "cancelling this function stops it too",
    "RL102": "a new root lifetime in code handed {lifetime} escapes its cancellation: use "
    "a child of it (or .detach(..., timeout=...))",
    "RL103": "detach() without a timeout: give the detached work a bound of its own",
    "RL104": "a shield without a deadline can hang a shutdown: use "
    "anyio.move_on_after(seconds, shield=True) or CancelScope(shield=True, deadline=...)",
    "RL105": "ThreadCancelled is swallowed: re-raise it, or the thread runs on for nobody",
    "RL106": "{call}() blocks the event loop: run it through the thread bridge "
    "(ThreadBridge.call / run)",
}
_LIFETIME_TYPES = {"Lifetime", "CancelToken"}
_BLOCKING = {
    "sqlite3.connect",
    "psycopg.connect",
    "psycopg.Connection.connect",
    "MilvusClient",
    "pymilvus.MilvusClient",
    "os.walk",
    "os.listdir",
    "os.scandir",
    "glob.glob",
    "shutil.rmtree",
    "shutil.copytree",
    "shutil.copyfile",
    "PdfReader",
    "pypdf.PdfReader",
}
_NOQA = re.compile(r"#\s*noqa:?(?P<codes>[\sA-Z0-9,]*)$")


@dataclass(frozen=True, order=True)
class Finding:
    """One report: where, which rule, and the message with its fix."""

    path: str
    line: int
    col: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col + 1}: {self.rule} {self.message}"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    return ""


def _names_lifetime(node: ast.AST | None) -> bool:
    """``Lifetime``, ``CancelToken``, or one of them ``| None`` / ``Optional[...]``."""
    if node is None:
        return False
    if isinstance(node, ast.Name | ast.Attribute):
        return _dotted(node).rsplit(".", 1)[-1] in _LIFETIME_TYPES
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _names_lifetime(node.left) or _names_lifetime(node.right)
    if isinstance(node, ast.Subscript) and _dotted(node.value).endswith("Optional"):
        return _names_lifetime(node.slice)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _names_lifetime(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return False
    return False


def _all_args(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    args = func.args
    return [*args.posonlyargs, *args.args, *args.kwonlyargs]


def _dotted_annotation(arg: ast.arg) -> str:
    return _dotted(arg.annotation).rsplit(".", 1)[-1] if arg.annotation is not None else ""


def _lifetime_params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    return [a for a in _all_args(func) if _names_lifetime(a.annotation)]


def _optional_lifetime(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the function takes a lifetime that a caller may leave out: the case a
    type checker cannot catch (a required one left out is a TypeError)."""
    args = func.args
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    for index, arg in enumerate(positional):
        if _names_lifetime(arg.annotation) and index >= first_default:
            return True
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        if _names_lifetime(arg.annotation) and default is not None:
            return True
    return False


def index_callees(trees: Iterable[ast.AST]) -> set[str]:
    """Names of the functions that take an optional lifetime (every definition of the
    name does: a name shared with one that does not is left alone)."""
    takes: dict[str, bool] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                optional = _optional_lifetime(node)
                takes[node.name] = takes.get(node.name, True) and optional
    return {name for name, optional in takes.items() if optional}


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: str, callees: set[str]) -> None:
        self.path = path
        self.callees = callees
        self.findings: list[Finding] = []
        self._scopes: list[set[str]] = []  # names that hold a lifetime, per function
        self._given: list[str] = []  # the lifetime (or request) each function was given
        self._async: list[bool] = []
        self._wait_for = 0

    def _report(self, node: ast.AST, rule: str, **names: str) -> None:
        message = RULES[rule].format(**names)
        line, col = getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        self.findings.append(Finding(self.path, line, col, rule, message))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, is_async: bool) -> None:
        params = [a.arg for a in _lifetime_params(node)]
        requests = [a.arg for a in _all_args(node) if _dotted_annotation(a) == "Request"]
        self._scopes.append(set(params))
        self._given.append((params or requests or [""])[0])
        self._async.append(is_async)
        self.generic_visit(node)
        self._async.pop()
        self._given.pop()
        self._scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node, False)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node, True)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.generic_visit(node)

    @property
    def _held(self) -> set[str]:
        return self._scopes[-1] if self._scopes else set()

    def _learn(self, target: ast.AST, value: ast.AST) -> None:
        """``stage = lifetime.child(...)`` (or ``with ... as stage``) holds a lifetime."""
        if isinstance(target, ast.Name) and self._is_lifetime(value) and self._scopes:
            self._scopes[-1].add(target.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)  # the value first: it is not yet the name's
        for target in node.targets:
            self._learn(target, node.value)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._learn(item.optional_vars, item.context_expr)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncWith = visit_With

    def _is_lifetime(self, node: ast.AST) -> bool:
        name = _dotted(node)
        if name and (name in self._held or name.rsplit(".", 1)[-1] in {"lifetime", "token"}):
            return True
        if isinstance(node, ast.Call):
            called = _dotted(node.func).rsplit(".", 1)[-1]
            if called in {"child", "detach", "afterlife", "root", "last_words"}:
                return True
        return False

    def visit_Try(self, node: ast.Try) -> None:
        for handler in node.handlers:
            caught = [_dotted(t) for t in _types(handler.type)]
            if any(c.rsplit(".", 1)[-1] == "ThreadCancelled" for c in caught) and not any(
                isinstance(n, ast.Raise) for n in ast.walk(handler)
            ):
                self._report(handler, "RL105")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        given = self._given[-1] if self._given else ""
        if given and name in {"Lifetime.root", "Lifetime"}:
            # Code that was handed a lifetime (or a request) is request-handling code.
            self._report(node, "RL102", lifetime=given)
        held = self._held
        if held and last in self.callees and not self._passes_lifetime(node):
            self._report(node, "RL101", callee=last, lifetime=given or sorted(held)[0])
        if (
            last == "detach"
            and "timeout" not in keywords
            and isinstance(node.func, ast.Attribute)
            and self._is_lifetime(node.func.value)
        ):
            self._report(node, "RL103")
        if last == "CancelScope" and _true(keywords.get("shield")) and "deadline" not in keywords:
            self._report(node, "RL104")
        if last == "suppress" and any(
            _dotted(a).rsplit(".", 1)[-1] == "ThreadCancelled" for a in node.args
        ):
            self._report(node, "RL105")
        if name == "asyncio.shield" and not self._wait_for:
            self._report(node, "RL104")
        if self._async and self._async[-1] and name in _BLOCKING:
            self._report(node, "RL106", call=name)
        waits = name in {"asyncio.wait_for", "wait_for"}
        self._wait_for += waits
        self.generic_visit(node)
        self._wait_for -= waits

    def _passes_lifetime(self, node: ast.Call) -> bool:
        values = [*node.args, *(k.value for k in node.keywords)]
        if any(isinstance(v, ast.Starred) for v in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            return True  # *args / **kwargs: cannot tell, so not reported
        return any(self._is_lifetime(v) for v in values)


def _types(node: ast.AST | None) -> list[ast.AST]:
    if node is None:
        return []
    return list(node.elts) if isinstance(node, ast.Tuple) else [node]


def _true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _skipped(finding: Finding, lines: Sequence[str]) -> bool:
    text = lines[finding.line - 1] if 0 < finding.line <= len(lines) else ""
    found = _NOQA.search(text)
    if found is None:
        return False
    codes = found.group("codes").replace(",", " ").split()
    return not codes or finding.rule in codes


def check_source(
    source: str, path: str = "<source>", callees: set[str] | None = None
) -> list[Finding]:
    """The findings in one file's source (RL101 against ``callees``, or this file's)."""
    tree = ast.parse(source, filename=path)
    visitor = _Visitor(path, callees if callees is not None else index_callees([tree]))
    visitor.visit(tree)
    lines = source.splitlines()
    return sorted(f for f in visitor.findings if not _skipped(f, lines))


def _files(paths: Iterable[str]) -> Iterator[Path]:
    for given in paths:
        path = Path(given)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.py") if ".venv" not in p.parts)
        else:
            yield path


def check_paths(paths: Iterable[str]) -> list[Finding]:
    """The findings in every ``.py`` file under ``paths``; RL101 knows every callee."""
    sources = {str(p): p.read_text(encoding="utf-8") for p in _files(paths)}
    trees = [ast.parse(text, filename=name) for name, text in sources.items()]
    callees = index_callees(trees)
    found: list[Finding] = []
    for name, text in sources.items():
        found += check_source(text, name, callees)
    return found


def main(paths: Sequence[str]) -> int:
    """``ragline check PATH…``: print the findings; exit 1 if there are any."""
    found = check_paths(paths or ["."])
    for finding in found:
        print(finding)
    if found:
        print(f"{len(found)} finding(s); the rules: docs/CHECK.md", file=sys.stderr)
    return 1 if found else 0


class Flake8Checker:
    """The same rules as a flake8 plugin (``flake8 --select=RL``), one file at a time."""

    name = "ragline"
    version = "0.1.0"

    def __init__(self, tree: ast.AST, filename: str) -> None:
        self._tree = tree
        self._filename = filename

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        visitor = _Visitor(self._filename, index_callees([self._tree]))
        visitor.visit(self._tree)
        for finding in visitor.findings:
            yield finding.line, finding.col, f"{finding.rule} {finding.message}", type(self)
