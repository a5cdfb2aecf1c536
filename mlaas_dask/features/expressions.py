"""Safe arithmetic expressions over branches: derived features and selection cuts.

An expression is a Python expression parsed with :mod:`ast` and compiled to a closure; only
numbers, branch names, arithmetic, comparisons, ``and``/``or``/``not`` (element-wise) and a
fixed list of numpy / awkward functions are allowed -- no attribute access, no subscripts, no
calls of anything else. The same compiled expression runs on numpy arrays, on awkward arrays
(one partition at training time, one request at serving time) and on dask-awkward arrays.

Expressions come from job files and from bundles received over the network, so compiling one
is bounded: its length, its nesting, integer literals (int64), and exponents known when it is
compiled (at most :data:`MAX_EXPONENT` in absolute value). Parts made only of numbers are
computed once, when the expression is compiled: evaluating an expression never makes a large
Python integer (``sum(Jet_pt) + 10**10**7`` is refused, not computed per request).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas_dask.errors import FeatureError, did_you_mean


def _reduce(name: str) -> Callable[[Any], Any]:
    def reducer(values: Any) -> Any:
        import awkward as ak

        return getattr(ak, name)(values, axis=-1)

    reducer.__name__ = name
    return reducer


def _count(values: Any) -> Any:
    import awkward as ak

    return ak.num(values, axis=-1)


#: longest expression text, deepest nesting, largest constant exponent
MAX_LENGTH = 2000
MAX_DEPTH = 50
MAX_EXPONENT = 64
_INT64_MAX = 2**63 - 1

#: functions an expression may call; element-wise ones come from numpy (they dispatch to
#: awkward and dask-awkward), reductions over the objects of an event from awkward.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{
        name: getattr(np, name)
        for name in (
            "abs sqrt exp log log10 log1p sin cos tan arcsin arccos arctan arctan2 "
            "sinh cosh tanh arcsinh arccosh arctanh hypot minimum maximum where "
            "isfinite isnan sign floor ceil"
        ).split()
    },
    "sum": _reduce("sum"),
    "max": _reduce("max"),
    "min": _reduce("min"),
    "mean": _reduce("mean"),
    "any": _reduce("any"),
    "all": _reduce("all"),
    "count": _count,
}

#: how many arguments each function takes (numpy's extra positional argument is ``out=``,
#: which would write into the events)
ARITY: dict[str, int] = {
    **dict.fromkeys(FUNCTIONS, 1),
    **dict.fromkeys(("arctan2", "hypot", "minimum", "maximum"), 2),
    "where": 3,
}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: np.logical_not,
    ast.Invert: operator.invert,
}
_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
#: what evaluating an expression on unsuitable events raises (numpy, awkward)
_EVALUATION_ERRORS = (ValueError, TypeError, ArithmeticError, IndexError)

Namespace = Mapping[str, Any]
Compiled = Callable[[Namespace], Any]


@dataclass(frozen=True)
class Expression:
    """A compiled expression with the branch names it reads.

    Parameters
    ----------
    text
        The expression, e.g. ``"hypot(MET_px, MET_py)"`` or ``"nJet >= 2 and MET_pt > 20"``.
    where
        What the expression is for, used in error messages (e.g. ``"derived feature 'HT'"``).

    Raises
    ------
    FeatureError
        When the text is not an allowed expression, or exceeds the bounds above.
    """

    text: str
    where: str = "expression"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise FeatureError(f"The {self.where} must be a string, not "
                               f"{type(self.text).__name__} {self.text!r}.")
        if len(self.text) > MAX_LENGTH:
            raise FeatureError(
                f"The {self.where} is {len(self.text):,} characters long ({self.text[:40]!r}"
                f"...); at most {MAX_LENGTH:,} are allowed. Split it into several derived "
                "features."
            )
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
            why = err.msg if isinstance(err, SyntaxError) else "it is nested too deeply"
            raise FeatureError(
                f"The {self.where} {_short(self.text)!r} is not a valid expression: {why}. "
                "Write Python-style arithmetic over branch names, e.g. 'hypot(MET_px, MET_py)' "
                "or 'nJet >= 2 and MET_pt > 20'."
            ) from None
        names: set[str] = set()
        fn = _compile(tree.body, names, self, 0)
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "names", frozenset(names))

    names: frozenset[str] = frozenset()

    def __call__(self, namespace: Namespace) -> Any:
        """Evaluate on a mapping of names to arrays."""
        missing = [n for n in self.names if n not in namespace]
        if missing:
            raise FeatureError(
                f"The {self.where} {_short(self.text)!r} uses {missing[0]!r}, which is not in the "
                f"events.{did_you_mean(missing[0], namespace.keys(), 'branches')}",
                branch=missing[0])
        try:
            with np.errstate(all="ignore"):  # NaN and inf are "missing" downstream
                return self._fn(namespace)  # type: ignore[attr-defined]
        except _EVALUATION_ERRORS as err:
            raise FeatureError(
                f"The {self.where} {_short(self.text)!r} cannot be computed on these events: "
                f"{type(err).__name__}: {err}"
            ) from None


@dataclass(frozen=True)
class _Constant:
    """A compiled number (a literal, or a part of the expression made only of numbers)."""

    value: Any

    def __call__(self, namespace: Namespace) -> Any:
        return self.value


def _refuse(node: ast.AST, expr: Expression, why: str) -> FeatureError:
    snippet = ast.get_source_segment(expr.text.strip(), node) or type(node).__name__
    if len(snippet) > 60:
        snippet = snippet[:60] + "..."
    return FeatureError(f"The {expr.where} {_short(expr.text)!r} is refused: {snippet!r} {why}.")


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


def _unsupported(node: ast.AST, expr: Expression) -> FeatureError:
    snippet = ast.get_source_segment(expr.text.strip(), node) or type(node).__name__
    return FeatureError(
        f"The {expr.where} {_short(expr.text)!r} uses {snippet[:60]!r}, which is not allowed. "
        "Expressions may use numbers, branch names, + - * / ** %, comparisons, and/or/not, "
        f"and the functions {', '.join(sorted(FUNCTIONS))}."
    )


def _compile(node: ast.AST, names: set[str], expr: Expression, depth: int) -> Compiled:
    if depth > MAX_DEPTH:
        raise _refuse(node, expr, f"is nested more than {MAX_DEPTH} levels deep")
    depth += 1
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return _Constant(_checked(node.value, node, expr))
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise _unsupported(node, expr)
        name = node.id
        names.add(name)
        return lambda ns: ns[name]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _binary(node, names, expr, depth)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op = _UNARY[type(node.op)]
        operand = _compile(node.operand, names, expr, depth)
        if isinstance(operand, _Constant):
            return _fold(op, (operand.value,), node, expr)
        return lambda ns: op(operand(ns))
    if isinstance(node, ast.BoolOp):
        join = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        parts = [_compile(v, names, expr, depth) for v in node.values]

        def boolop(ns: Namespace) -> Any:
            result = parts[0](ns)
            for part in parts[1:]:
                result = join(result, part(ns))
            return result

        return boolop
    if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
        operands = [_compile(n, names, expr, depth) for n in [node.left, *node.comparators]]
        ops = [_COMPARE[type(o)] for o in node.ops]

        def compare(ns: Namespace) -> Any:
            values = [f(ns) for f in operands]
            result = ops[0](values[0], values[1])
            for i in range(1, len(ops)):
                result = result & ops[i](values[i], values[i + 1])
            return result

        return compare
    if isinstance(node, ast.Call):
        return _call(node, names, expr, depth)
    raise _unsupported(node, expr)


def _binary(node: ast.BinOp, names: set[str], expr: Expression, depth: int) -> Compiled:
    op = _BINARY[type(node.op)]
    left = _compile(node.left, names, expr, depth)
    right = _compile(node.right, names, expr, depth)
    if isinstance(node.op, ast.Pow) and isinstance(right, _Constant) \
            and abs(right.value) > MAX_EXPONENT:
        raise _refuse(node, expr, f"raises to the power {right.value:g}; constant exponents "
                                  f"may be at most {MAX_EXPONENT} in absolute value")
    if isinstance(left, _Constant) and isinstance(right, _Constant):
        return _fold(op, (left.value, right.value), node, expr)
    return lambda ns: op(left(ns), right(ns))


def _call(node: ast.Call, names: set[str], expr: Expression, depth: int) -> Compiled:
    if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords):
        raise _unsupported(node, expr)
    name = node.func.id
    if len(node.args) != ARITY[name]:
        raise _refuse(node, expr, f"gives {name}() {len(node.args)} argument(s); it takes "
                                  f"{ARITY[name]}")
    fn = FUNCTIONS[name]
    args = [_compile(a, names, expr, depth) for a in node.args]
    return lambda ns: fn(*(a(ns) for a in args))


def _fold(op: Callable[..., Any], values: tuple[Any, ...], node: ast.AST,
          expr: Expression) -> _Constant:
    """Compute a part made only of numbers now, with its result bounded like a literal."""
    try:
        with np.errstate(all="ignore"):
            result = op(*values)
    except (ArithmeticError, ValueError) as err:
        raise _refuse(node, expr, f"cannot be computed ({err})") from None
    if isinstance(result, np.generic):
        result = result.item()
    if not isinstance(result, int | float):
        raise _refuse(node, expr, "is not a real number")
    return _Constant(_checked(result, node, expr))


def _checked(value: float, node: ast.AST, expr: Expression) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64_MAX:
        raise _refuse(node, expr, "is too large: integers must fit in 64 bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(node, expr, "is not a finite number")
    return value
