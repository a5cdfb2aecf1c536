"""What a model file from elsewhere may hold: exact, audited types, and sound native structures.

A skops file names every object it rebuilds by module and class, and loading it imports and
calls what it names. Prefixes are not a safe list: functions that run code live under
safe-looking modules (``numpy.testing._private.utils.runstring`` exec()s its argument,
``numpy.distutils.exec_command.exec_command`` runs a shell). So a skops model may hold only
the exact ``(type, skops loader)`` pairs in :data:`SAFE_TYPES`.

How the list was derived (scikit-learn 1.8, numpy 2.4, skops 0.16): every estimator below was
fitted on binary and three-class data (also with ``partial_fit``, early stopping, class
weights, NaN inputs and a RandomState), dumped with ``skops.io.dumps``, and every node of its
``schema.json`` listed with its loader, next to ``skops.io.get_untrusted_types``. Each
candidate was then read by hand: classes whose construction only stores data, no functions,
nothing that executes, and nothing whose native code reads unchecked indices unless
:func:`check_native_structures` validates those indices first.
``tests/test_bundle_security.py::test_real_estimators_hold_only_safe_types`` repeats the
dumps, so a new scikit-learn that needs a new type fails there, not in production.

Left out on purpose (loadable locally with ``--trust``, never by the server): k-nearest
neighbours (KDTree / BallTree index arrays are read without bounds checks), SVC (libsvm reads
its support vector arrays unchecked), categorical HistGradientBoosting (its preprocessor holds
``functools.partial(check_array)``), FunctionTransformer and anything else holding a function.
No scipy type is needed by any of the estimators (they hold numpy arrays only).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mlaas_dask.errors import BundleError

#: a skops file is written uncompressed; more than this unpacked is refused (a zip bomb)
MAX_SKOPS_UNPACKED_BYTES = 1024**3
MAX_SKOPS_MEMBERS = 100_000

_ESTIMATORS = [
    # linear models
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._perceptron.Perceptron",
    "sklearn.linear_model._ridge.RidgeClassifier",
    "sklearn.linear_model._ridge.RidgeClassifierCV",
    "sklearn.discriminant_analysis.LinearDiscriminantAnalysis",
    "sklearn.discriminant_analysis.QuadraticDiscriminantAnalysis",
    "sklearn.naive_bayes.GaussianNB",
    "sklearn.naive_bayes.BernoulliNB",
    # trees and ensembles (their Tree / TreePredictor are checked after loading)
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._weight_boosting.AdaBoostClassifier",
    "sklearn.ensemble._bagging.BaggingClassifier",
    "sklearn.ensemble._voting.VotingClassifier",
    "sklearn.ensemble._stacking.StackingClassifier",
    "sklearn.dummy.DummyClassifier",
    # neural network, calibration
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.isotonic.IsotonicRegression",
    # pipelines and preprocessing
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.MaxAbsScaler",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._data.QuantileTransformer",
    "sklearn.preprocessing._data.PowerTransformer",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.decomposition._pca.PCA",
]

_INTERNALS = [
    # what the estimators above hold: plain data classes
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.ExponentialLoss",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.HalfLogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
]

# Cython loss objects, rebuilt by calling the class with numbers. ``_loss`` is how
# sklearn._loss._loss names itself: it resolves once scikit-learn is imported.
_LOSSES = [
    "_loss.CyHalfBinomialLoss",
    "_loss.CyHalfMultinomialLoss",
    "_loss.CyExponentialLoss",
    "_loss.CyHalfSquaredError",
    "_loss.CyHuberLoss",
    "sklearn.linear_model._sgd_fast.Hinge",
    "sklearn.linear_model._sgd_fast.ModifiedHuber",
    "sklearn.linear_model._sgd_fast.SquaredHinge",
    "sklearn.linear_model._sgd_fast.EpsilonInsensitive",
    "sklearn.linear_model._sgd_fast.SquaredEpsilonInsensitive",
]

_NUMPY_SCALARS = [
    f"numpy.{name}" for name in ("bool", "float16", "float32", "float64", "int8", "int16",
                                 "int32", "int64", "uint8", "uint16", "uint32", "uint64")
]
_KEY_TYPES = ["builtins.str", "builtins.int", "builtins.float", "builtins.bool",
              *_NUMPY_SCALARS]


def _pairs(loader: str, names: Iterable[str]) -> dict[str, set[str]]:
    return {name: {loader} for name in names}


def _merge(*groups: dict[str, set[str]]) -> dict[str, frozenset[str]]:
    merged: dict[str, set[str]] = {}
    for group in groups:
        for name, loaders in group.items():
            merged.setdefault(name, set()).update(loaders)
    return {name: frozenset(loaders) for name, loaders in merged.items()}


#: type name -> the skops loaders it may come through (any other pair is refused)
SAFE_TYPES: dict[str, frozenset[str]] = _merge(
    _pairs("ObjectNode", _ESTIMATORS + _INTERNALS),
    _pairs("LossNode", _LOSSES),
    _pairs("TreeNode", ["sklearn.tree._tree.Tree"]),
    _pairs("DictNode", ["builtins.dict", "sklearn.utils._bunch.Bunch"]),
    _pairs("ListNode", ["builtins.list"]),
    _pairs("TupleNode", ["builtins.tuple"]),
    _pairs("JsonNode", ["builtins.str"]),
    _pairs("SliceNode", ["builtins.slice"]),
    _pairs("TypeNode", _KEY_TYPES),  # dict key types, called with the key's text
    _pairs("NdArrayNode", ["numpy.ndarray", *_NUMPY_SCALARS]),
    _pairs("DTypeNode", ["numpy.dtype"]),
    _pairs("RandomStateNode", ["numpy.random.mtrand.RandomState"]),
    _pairs("RandomGeneratorNode", ["numpy.random._generator.Generator"]),
)

#: why some types a user may meet are not on the list
NOT_SAFE_REASONS: dict[str, str] = {
    "sklearn.neighbors._kd_tree.KDTree": "its index arrays are read without bounds checks",
    "sklearn.neighbors._ball_tree.BallTree": "its index arrays are read without bounds checks",
    "sklearn.svm._classes.SVC": "libsvm reads its support vector arrays without checks",
    "functools.partial": "it is a function",
}


def skops_types(data: bytes, name: str) -> set[tuple[str, str]]:
    """Every ``(type, loader)`` pair named in a skops file's schema, found without
    importing or building anything. Cached nodes (references to an object named
    elsewhere in the file) are skipped; bound methods are named ``module.Class.method``."""
    schema = _read_schema(data, name)
    found: set[tuple[str, str]] = set()
    stack: list[Any] = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__class__" in item or "__module__" in item:
                found.add(_node_type(item))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    found.discard(("", "CachedNode"))
    return found


def _node_type(state: dict[str, Any]) -> tuple[str, str]:
    loader = str(state.get("__loader__"))
    if loader == "CachedNode":
        return "", loader
    type_name = f"{state.get('__module__')}.{state.get('__class__')}"
    if loader == "MethodNode":
        content = state.get("content")
        method = content.get("func") if isinstance(content, dict) else None
        type_name = f"{type_name}.{method}"
    return type_name, loader


def _read_schema(data: bytes, name: str) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
        if len(members) > MAX_SKOPS_MEMBERS:
            raise BundleError(f"{name} has {len(members):,} members; at most "
                              f"{MAX_SKOPS_MEMBERS:,} are allowed.")
        unpacked = sum(m.file_size for m in members)
        if unpacked > MAX_SKOPS_UNPACKED_BYTES:
            raise BundleError(f"{name} unpacks to {unpacked:,} bytes; at most "
                              f"{MAX_SKOPS_UNPACKED_BYTES:,} are allowed.")
        return json.loads(archive.read("schema.json"))
    except BundleError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError, OSError) as err:
        raise BundleError(f"{name} is not a readable skops file ({err}).") from None


def refused_types(found: Iterable[tuple[str, str]], untrusted: Iterable[str],
                  trusted: Sequence[str]) -> list[str]:
    """Types of the file that are neither on :data:`SAFE_TYPES` (for their loader) nor
    trusted by the caller; ``untrusted`` (skops' own audit) is checked too, as it names
    types that the schema holds as plain strings."""
    refused = set()
    for type_name, loader in found:
        if loader not in SAFE_TYPES.get(type_name, ()) and type_name not in trusted:
            refused.add(f"{type_name} loaded by {loader}" if type_name in SAFE_TYPES
                        else type_name)
    refused.update(t for t in untrusted if t not in SAFE_TYPES and t not in trusted)
    return sorted(refused)


def explain(types: Iterable[str]) -> str:
    """Why the known ones among ``types`` are not on the list (an empty string if none)."""
    reasons = [f"{t.rpartition('.')[2]}: {NOT_SAFE_REASONS[t]}" for t in types
               if t in NOT_SAFE_REASONS]
    return f" Not on the list because {'; '.join(reasons)}." if reasons else ""


# -- native structures ------------------------------------------------------------------------


def check_native_structures(model: Any, where: str) -> None:
    """Raise :class:`BundleError` unless every tree of ``model`` that native code walks
    without bounds checks is sound: child indices inside the tree and after their parent
    (no cycles), split features inside the estimator's input, and each tree where its
    estimator reads it. A crafted tree otherwise crashes the process or loops forever."""
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import (
        BaseHistGradientBoosting,
    )
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree import BaseDecisionTree
    from sklearn.tree._tree import Tree

    checked: set[int] = set()
    objects = list(_reachable(model))
    for obj in objects:
        if isinstance(obj, BaseDecisionTree) and "tree_" in vars(obj):
            _check_tree(obj.tree_, _width(obj, where), where)
            checked.add(id(obj.tree_))
        elif isinstance(obj, BaseHistGradientBoosting):
            checked.update(_check_hist_gradient_boosting(obj, where))
        if isinstance(obj, BaseGradientBoosting):
            _check_gradient_boosting(obj, where)
    for obj in objects:
        if isinstance(obj, Tree | TreePredictor) and id(obj) not in checked:
            raise BundleError(f"{where}: a {type(obj).__name__} sits outside the estimator "
                              "that owns it; the file is corrupt or crafted.")


def _reachable(root: Any) -> Iterator[Any]:
    """Every object reachable from ``root`` through attributes, containers and object
    arrays (each once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | type):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


def _width(estimator: Any, where: str) -> int:
    width = getattr(estimator, "n_features_in_", None)
    if not isinstance(width, int | np.integer) or isinstance(width, bool) or width < 1:
        raise BundleError(f"{where}: {type(estimator).__name__} has no valid n_features_in_ "
                          f"({width!r}); the file is corrupt or crafted.")
    return int(width)


def _corrupt(where: str, what: str) -> BundleError:
    return BundleError(f"{where}: {what}; the file is corrupt or crafted, so it is not used.")


def _check_tree(tree: Any, width: int, where: str) -> None:
    """A scikit-learn ``Tree``: nodes inside its allocation, children after their parent."""
    count = int(tree.node_count)
    if not 1 <= count <= int(tree.capacity):
        raise _corrupt(where, f"a decision tree claims {count} nodes in room for "
                              f"{tree.capacity}")
    if int(tree.n_features) != width:
        raise _corrupt(where, f"a decision tree reads {tree.n_features} features but its "
                              f"estimator takes {width}")
    _check_children(tree.children_left, tree.children_right, tree.children_left == -1,
                    tree.feature, width, where, "decision tree")


def _check_children(left: np.ndarray, right: np.ndarray, leaf: np.ndarray,
                    feature: np.ndarray, width: int, where: str, what: str) -> None:
    left, right = left.astype(np.int64), right.astype(np.int64)
    count = len(left)
    index = np.arange(count)
    inner = ~leaf
    sound = ((left[inner] > index[inner]) & (left[inner] < count)
             & (right[inner] > index[inner]) & (right[inner] < count)
             & (feature[inner] >= 0) & (feature[inner] < width))
    if not sound.all():
        node = int(index[inner][~sound][0])
        raise _corrupt(where, f"{what} node {node} points outside the tree or reads "
                              f"feature {int(feature[node])} of {width}")


def _check_hist_gradient_boosting(model: Any, where: str) -> set[int]:
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    width = _width(model, where)
    categorical = getattr(getattr(model, "_bin_mapper", None), "is_categorical_", None)
    if getattr(model, "_preprocessor", None) is not None or (
            categorical is not None and np.asarray(categorical).any()):
        raise _corrupt(where, "a HistGradientBoosting model has categorical features, "
                              "which are not supported")
    checked = set()
    for predictor in (p for iteration in model._predictors for p in iteration):
        nodes = predictor.nodes
        if (not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE
                or nodes.ndim != 1 or len(nodes) == 0):
            raise _corrupt(where, "a HistGradientBoosting tree has malformed nodes")
        if nodes["is_categorical"].any():
            raise _corrupt(where, "a HistGradientBoosting tree has categorical splits")
        _check_children(nodes["left"], nodes["right"], nodes["is_leaf"] != 0,
                        nodes["feature_idx"], width, where, "HistGradientBoosting tree")
        checked.add(id(predictor))
    return checked


def _check_gradient_boosting(model: Any, where: str) -> None:
    """GradientBoosting's native prediction walks ``estimators_[i, k].tree_`` and writes
    column ``k`` of the init estimator's raw predictions without checks."""
    from sklearn.tree import DecisionTreeRegressor

    stages = model.estimators_
    if not isinstance(stages, np.ndarray) or stages.ndim != 2 or stages.size == 0:
        raise _corrupt(where, "GradientBoosting has no 2-d array of trees")
    width = _width(model, where)
    for tree in stages.ravel():
        if (not isinstance(tree, DecisionTreeRegressor) or _width(tree, where) != width
                or tree.tree_.n_outputs != 1 or tree.tree_.max_n_classes != 1):
            raise _corrupt(where, "a GradientBoosting stage is not a regression tree over "
                                  "the model's features")
    try:
        raw = model._raw_predict_init(np.zeros((1, width), dtype=np.float32))
    except Exception as err:  # noqa: BLE001 - any failure means an inconsistent model
        raise _corrupt(where, f"GradientBoosting's initial prediction fails ({err})") from None
    if np.shape(raw) != (1, stages.shape[1]):
        raise _corrupt(where, f"GradientBoosting has {stages.shape[1]} trees per stage but "
                              f"its initial prediction has shape {np.shape(raw)}")


def check_xgboost_trees(model: dict[str, Any], n_features: int, where: str) -> None:
    """Raise :class:`BundleError` unless an XGBoost model (its JSON form, as the loaded
    booster saves it) holds only sound numerical trees: XGBoost's predictor follows child
    and feature indices and writes output groups without bounds checks."""
    learner = model.get("learner", {})
    booster = learner.get("gradient_booster", {})
    if booster.get("name") == "dart":
        booster = booster.get("gbtree", {})
    if booster.get("name") != "gbtree":
        raise BundleError(f"{where}: the model uses the {booster.get('name')!r} booster; only "
                          "tree boosters (gbtree, dart) are served. Retrain with gbtree.")
    params = learner.get("learner_model_param", {})
    groups = max(int(params.get("num_class", 0)), int(params.get("num_target", 1)), 1)
    trees, info = booster["model"]["trees"], booster["model"]["tree_info"]
    if len(info) != len(trees) or any(not 0 <= int(g) < groups for g in info):
        raise _corrupt(where, f"the model's trees do not map onto its {groups} output(s)")
    for number, tree in enumerate(trees):
        _check_xgboost_tree(tree, n_features, where, f"tree {number}")


def _check_xgboost_tree(tree: dict[str, Any], width: int, where: str, what: str) -> None:
    param = tree.get("tree_param", {})
    if int(param.get("size_leaf_vector", 1)) > 1:
        raise BundleError(f"{where}: {what} has vector leaves (multi_strategy="
                          "multi_output_tree), which are not supported.")
    count = int(param.get("num_nodes", 0))
    arrays = {key: np.asarray(tree.get(key, []), dtype=np.int64)
              for key in ("left_children", "right_children", "split_indices", "split_type")}
    if count < 1 or any(len(a) != count for a in arrays.values()):
        raise _corrupt(where, f"{what} has node arrays of the wrong length")
    if arrays["split_type"].any():
        raise BundleError(f"{where}: {what} has categorical splits, which are not supported; "
                          "features are numbers.")
    left, right = arrays["left_children"], arrays["right_children"]
    leaf = left == -1
    inner = ~leaf
    children = np.concatenate([left[inner], right[inner]])
    sound = ((children >= 1) & (children < count)).all() and (right[leaf] == -1).all()
    # each node has at most one parent and the root none: no path can come back
    if not sound or np.bincount(children, minlength=count).max(initial=0) > 1:
        raise _corrupt(where, f"{what} has child indices outside the tree or shared nodes")
    features = arrays["split_indices"][inner]
    if len(features) and not ((features >= 0) & (features < width)).all():
        raise _corrupt(where, f"{what} splits on a feature outside the model's {width}")
