"""Safe arithmetic expressions over branches: derived features and selection cuts.

An expression is a Python expression parsed with :mod:`ast` and compiled to a closure; only
numbers, branch names, arithmetic, comparisons, ``and``/``or``/``not`` (element-wise) and a
fixed list of numpy / awkward functions are allowed -- no attribute access, no subscripts, no
calls of anything else. The same compiled expression runs on numpy arrays, on awkward arrays
(one partition at training time, one request at serving time) and on dask-awkward arrays.
"""

from __future__ import annotations

import ast
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
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.invert,
          ast.Invert: operator.invert}
_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}

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
    """

    text: str
    where: str = "expression"

    def __post_init__(self) -> None:
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as err:
            raise FeatureError(
                f"The {self.where} {self.text!r} is not a valid expression: {err.msg}. "
                "Write Python-style arithmetic over branch names, e.g. 'hypot(MET_px, MET_py)' "
                "or 'nJet >= 2 and MET_pt > 20'."
            ) from None
        names: set[str] = set()
        fn = _compile(tree.body, names, self)
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "names", frozenset(names))

    names: frozenset[str] = frozenset()

    def __call__(self, namespace: Namespace) -> Any:
        """Evaluate on a mapping of names to arrays."""
        missing = [n for n in self.names if n not in namespace]
        if missing:
            raise FeatureError(
                f"The {self.where} {self.text!r} uses {missing[0]!r}, which is not in the "
                f"events.{did_you_mean(missing[0], namespace.keys(), 'branches')}"
            )
        return self._fn(namespace)  # type: ignore[attr-defined]


def _unsupported(node: ast.AST, expr: Expression) -> FeatureError:
    snippet = ast.get_source_segment(expr.text.strip(), node) or type(node).__name__
    return FeatureError(
        f"The {expr.where} {expr.text!r} uses {snippet!r}, which is not allowed. Expressions "
        f"may use numbers, branch names, + - * / ** %, comparisons, and/or/not, and the "
        f"functions {', '.join(sorted(FUNCTIONS))}."
    )


def _compile(node: ast.AST, names: set[str], expr: Expression) -> Compiled:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
        value = node.value
        return lambda ns: value
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise _unsupported(node, expr)
        name = node.id
        names.add(name)
        return lambda ns: ns[name]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, names, expr), _compile(node.right, names, expr)
        return lambda ns: op(left(ns), right(ns))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op = _UNARY[type(node.op)]
        operand = _compile(node.operand, names, expr)
        return lambda ns: op(operand(ns))
    if isinstance(node, ast.BoolOp):
        op = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        parts = [_compile(v, names, expr) for v in node.values]

        def boolop(ns: Namespace) -> Any:
            result = parts[0](ns)
            for part in parts[1:]:
                result = op(result, part(ns))
            return result

        return boolop
    if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
        operands = [_compile(n, names, expr) for n in [node.left, *node.comparators]]
        ops = [_COMPARE[type(o)] for o in node.ops]

        def compare(ns: Namespace) -> Any:
            values = [f(ns) for f in operands]
            result = ops[0](values[0], values[1])
            for i in range(1, len(ops)):
                result = result & ops[i](values[i], values[i + 1])
            return result

        return compare
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
    ):
        fn = FUNCTIONS[node.func.id]
        args = [_compile(a, names, expr) for a in node.args]
        return lambda ns: fn(*(a(ns) for a in args))
    raise _unsupported(node, expr)
