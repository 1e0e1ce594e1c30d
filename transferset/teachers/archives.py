"""Look inside a teacher archive before torch loads it: refuse what would run code.

`torch.export.load` is not a safe loader. Reading torch 2.13's own code, a `.pt2`
can run code from the file in five places, none of which our own exports use:

* payloads marked `use_pickle` (weights or constants), opaque and custom objects,
  and legacy `*.pt` blobs: unpickled with full pickle (`weights_only=False`, or a
  weights_only attempt that falls back to it on failure, as sample inputs do);
* symbolic shape expressions (`expr_str`): parsed by `sympy.sympify`, which is
  `eval` with the builtins in scope;
* `guards_code`: Python source that `.module()` compiles and runs;
* graph node targets: resolved by `getattr` from `torch`, `_operator` or `math`,
  so `torch.os.system` is a valid target that runs when the program is called;
* AOTInductor / ExecuTorch payloads: native code.

So a `.pt2` is opened here as a zip of JSON and raw tensor bytes, and everything
that would reach one of those paths is checked against what `torch.export.save`
writes for an ordinary model: operators from `torch.ops`, sympy expressions over
shape symbols, guards over input sizes. Anything else is refused unless the user
passes `--trust-checkpoint`.

TorchScript archives unpickle with TorchScript's own C++ unpickler, which only
builds tensors, containers and `__torch__` classes; the globals every pickle in
the archive names are checked against that set here as well, so that a file
which only loads through something broader is refused before torch sees it.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import tokenize
import warnings
import zipfile
from pathlib import PurePosixPath
from typing import Any, Iterator

# Names that a sympy expression written by torch.export may call: sympy's core
# constructors and torch's own sympy functions. No attribute access, no dunders.
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Mul", "Add", "Pow", "Mod", "Max", "Min", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "true", "false", "oo", "zoo", "nan", "pi", "E", "Piecewise",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "True", "False",
    # Not `S`: S('name') looks the name up through sympify, builtins included.
}
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names a guard written by torch.export may use: sizes, strides and arithmetic on them.
_GUARD_NAMES = {"L", "size", "stride", "storage_offset", "dim", "numel", "max", "min", "abs", "and", "or", "not",
                "True", "False", "None", "len", "math", "sqrt", "floor", "ceil", "trunc"}
# Safe `_operator` targets (symbolic shape arithmetic); `call`, `attrgetter` and
# `methodcaller` are not among them: they reach arbitrary attributes.
_OPERATOR_TARGETS = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne", "lt",
    "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "matmul", "truth", "iadd", "imul",
}
_OP_TARGET = re.compile(r"^torch\.ops\.[A-Za-z][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_SYM_TARGET = re.compile(r"^(torch\._?sym_[a-z_]+|math\.[a-z_]+[0-9]*)$")
# torch.ops attributes that are functions, not operator namespaces.
_NOT_NAMESPACES = {"load_library", "import_module", "loaded_libraries"}
_NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")

# Globals TorchScript's unpickler builds (tensors, storages, containers, scripted classes).
_TORCHSCRIPT_GLOBALS = re.compile(
    r"^(__torch__(\.[\w]+)*|torch\._utils|torch|torch\.jit\._pickle|collections|builtins|torch\.distributed\.rpc) \w+$"
)
_TORCHSCRIPT_BUILTINS = {"builtins set", "builtins list", "builtins dict", "builtins tuple", "builtins complex"}


def unsafe_export_parts(path: str) -> list[str]:
    """What in the torch.export archive at `path` would run code when loaded or
    called (empty: nothing). Each entry names the part and why."""
    problems: list[str] = []
    with zipfile.ZipFile(path) as archive:
        problems += _duplicate_names(archive)
        for name in archive.namelist():
            try:
                problems += _unsafe_export_entry(archive, name)
            except Exception as error:  # a damaged entry (bad CRC, nesting, compression): torch must not read it either
                problems.append(f"{_inner(name)} (unreadable: {type(error).__name__})")
    return problems


def _unsafe_export_entry(archive: zipfile.ZipFile, name: str) -> list[str]:
    inner = _inner(name)
    if inner.startswith(_NATIVE_DIRS):
        return [f"{inner} (compiled native code)"]
    if inner.endswith(".pt") or inner.endswith(".pkl"):
        return [] if _loads_as_weights(archive.read(name)) else [f"{inner} (a pickle of Python objects)"]
    if re.fullmatch(r"data/(weights|constants)/[^/]+_config\.json", inner):
        return _unsafe_payloads(inner, archive.read(name))
    if re.fullmatch(r"models/[^/]+\.json|serialized_exported_program\.json", inner):
        return _unsafe_program(inner, archive.read(name))
    return []


def _duplicate_names(archive: zipfile.ZipFile) -> list[str]:
    """A name stored twice: Python's zipfile reads the last copy, torch's reader may read
    the first, so what we checked need not be what torch loads."""
    names = archive.namelist()
    return [f"{name} (stored twice)" for name in sorted({n for n in names if names.count(n) > 1})]


def unsafe_torchscript_parts(path: str) -> list[str]:
    """What in the TorchScript archive at `path` names a global outside what
    TorchScript's unpickler builds (empty: nothing)."""
    problems: list[str] = []
    with zipfile.ZipFile(path) as archive:
        problems += _duplicate_names(archive)
        for name in archive.namelist():
            if not name.endswith(".pkl"):
                continue
            try:
                payload = archive.read(name)
            except Exception as error:
                problems.append(f"{_inner(name)} (unreadable: {type(error).__name__})")
                continue
            for global_name in _pickle_globals(payload):
                builtin_ok = not global_name.startswith("builtins ") or global_name in _TORCHSCRIPT_BUILTINS
                if not (builtin_ok and _TORCHSCRIPT_GLOBALS.match(global_name)):
                    problems.append(f"{_inner(name)} (names {global_name.replace(' ', '.')})")
    return problems


def _inner(name: str) -> str:
    """An archive member's path below the archive's root folder."""
    parts = PurePosixPath(name).parts
    return "/".join(parts[1:]) if len(parts) > 1 else name


def _loads_as_weights(payload: bytes) -> bool:
    import torch

    if not payload:
        return True  # torch reads an empty blob as "nothing", without unpickling
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; our refusal is the one line
            torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception:
        # Any failure counts: torch's loader retries sample inputs with full pickle
        # after *any* exception of the weights_only attempt.
        return False
    return True


def _unsafe_payloads(where: str, raw: bytes) -> list[str]:
    try:
        config = json.loads(raw).get("config", {})
    except (ValueError, AttributeError):
        return [f"{where} (not valid JSON)"]
    problems = []
    for fqn, meta in config.items() if isinstance(config, dict) else []:
        if not isinstance(meta, dict):
            problems.append(f"{where}: {fqn} (malformed entry)")
        elif meta.get("use_pickle"):
            problems.append(f"{where}: {fqn} (stored as a pickle)")
        elif "/constants/" in f"/{where}" and not str(meta.get("path_name", "")).startswith("tensor_"):
            problems.append(f"{where}: {fqn} (a {str(meta.get('path_name')).rstrip('0123456789')} object, unpickled on load)")
    return problems


def _unsafe_program(where: str, raw: bytes) -> list[str]:
    try:
        program = json.loads(raw)
    except ValueError:
        return [f"{where} (not valid JSON)"]
    problems = []
    for key, value in _walk(program):
        if key == "expr_str" and not _safe_sympy(value):
            problems.append(f"{where}: shape expression {str(value)[:60]!r} (evaluated as Python)")
        elif key in ("target", "as_operator") and isinstance(value, str) and not safe_graph_target(value):
            problems.append(f"{where}: graph call {value[:60]!r} (not a torch operator)")
    guards = program.get("guards_code") or [] if isinstance(program, dict) else []
    for guard in guards if isinstance(guards, list) else [guards]:
        if not safe_guard(guard):
            problems.append(f"{where}: guard {str(guard)[:60]!r} (compiled and run as Python)")
    return problems


def _walk(node: Any, key: str | None = None, depth: int = 0) -> Iterator[tuple[str | None, Any]]:
    if depth > 200:  # a program graph is a few levels deep; a pathological nesting is not one
        yield "target", "<nested too deeply>"
        return
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k, depth + 1)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key, depth + 1)
    else:
        yield key, node


def safe_graph_target(target: str) -> bool:
    """Whether a graph node's target resolves to a torch operator or shape arithmetic only."""
    if "__" in target:
        return False
    if target.startswith("torch.ops."):
        return bool(_OP_TARGET.match(target)) and target.split(".")[2] not in _NOT_NAMESPACES
    if target.startswith("_operator."):
        return target.split(".", 1)[1] in _OPERATOR_TARGETS
    return bool(_SYM_TARGET.match(target))


def safe_guard(guard: Any) -> bool:
    """Whether a guard is arithmetic over input sizes (it is compiled and run as Python)."""
    return isinstance(guard, str) and _safe_tokens(guard, _GUARD_NAMES, allow_attributes=True)


def _safe_sympy(expr: Any) -> bool:
    return isinstance(expr, str) and _safe_tokens(expr, _SYMPY_NAMES, allow_attributes=False, free_symbols=True)


def _safe_tokens(code: str, names: set[str], allow_attributes: bool, free_symbols: bool = False) -> bool:
    """True when `code` is an expression built only from `names` (plus shape
    symbols such as `s31` where `free_symbols`), numbers, identifier-like string
    literals and arithmetic: nothing that can reach an object's attributes.

    A string is allowed only where torch writes one: a symbol's name right after
    `Symbol(` in a shape expression, an input's name right after `[` in a guard.
    Anywhere else (Integer('...'), Rational('...')) sympy would parse it as code."""
    if "__" in code or "\n" in code.strip():
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    before: list[str] = ["", ""]  # the two tokens before this one
    for token in tokens:
        kind, text = token.type, token.string
        before, previous = [before[1], text], before
        if kind in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.NUMBER):
            continue
        if kind == tokenize.NAME:
            if text not in names and not (free_symbols and re.fullmatch(r"[a-z]+[0-9]+", text)):
                return False
        elif kind == tokenize.STRING:
            where_allowed = previous == ["Symbol", "("] if free_symbols else previous[1] == "["
            if not (where_allowed and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and _SYMBOL.match(text[1:-1])):
                return False
        elif kind == tokenize.OP:
            if text == "." and not allow_attributes:
                return False
            if text not in {"(", ")", "[", "]", ",", "=", "+", "-", "*", "/", "//", "%", "**", "<", ">", "<=", ">=",
                            "==", "!=", "&", "|", "~", "."}:
                return False
        else:
            return False
    return True


def _pickle_globals(payload: bytes) -> list[str]:
    """'module name' for every GLOBAL / INST / STACK_GLOBAL a pickle names. STACK_GLOBAL
    takes its two names from the strings pushed just before it; when they are
    not plain string pushes, the pickle is treated as naming an unknown global."""
    found = []
    strings: list[str | None] = []
    try:
        for opcode, arg, _ in pickletools.genops(payload):
            if opcode.name in ("GLOBAL", "INST"):  # INST names its class the way GLOBAL does
                found.append(str(arg))
            elif opcode.name == "STACK_GLOBAL":
                module, name = strings[-2:] if len(strings) >= 2 else (None, None)
                found.append(f"{module} {name}" if module and name else "<computed> <global>")
            elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif opcode.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                continue
            else:
                strings.append(None)
    except Exception:
        found.append("<unreadable> <pickle>")
    return found
