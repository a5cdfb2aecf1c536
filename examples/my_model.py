"""A model file in the MLaaS4HEP style: ``model(n_features)`` returns the estimator.

Used by ``examples/sample-model-file.yaml``. Estimators with ``partial_fit`` train over
the Dask partitions; the bundle stores the model with skops (standard scikit-learn types
only here, so ``mlaas serve`` can load it without trusting this file).
"""

from sklearn.neural_network import MLPClassifier


def model(n_features):
    """A small multi-layer perceptron sized from the number of input features."""
    hidden = max(8, n_features)
    return MLPClassifier(hidden_layer_sizes=(hidden, hidden // 2), learning_rate_init=1e-3,
                         random_state=0)
