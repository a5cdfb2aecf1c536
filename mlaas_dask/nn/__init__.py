"""Neural networks on the Dask data path: PyTorch modules (and Keras 3 models, see
:mod:`mlaas_dask.nn.keras`) from a user's model file, trained from the feature partitions
the workers computed, stored as ONNX + safetensors and served with onnxruntime.

- :mod:`~mlaas_dask.nn.modelfile`: the model file -- kind detection (torch, keras or a
  scikit-learn estimator), the module, its output width, logits or probabilities, the
  optional ``loss()`` / ``optimizer(params)`` factories;
- :mod:`~mlaas_dask.nn.loader`: blocks of the training split mixed across partitions
  (no one-class batch), preprocessed, prefetched in a background thread; in memory or
  streamed epoch by epoch with memory bounded by the prefetch depth;
- :mod:`~mlaas_dask.nn.trainer`: the training loop of one rank
  (:func:`~mlaas_dask.nn.trainer.train_rank`), run inside a Dask task on the chosen worker;
- :mod:`~mlaas_dask.nn.export`: ONNX export (probabilities baked into the graph, dynamic
  batch axis) and safetensors weights.

Nothing here imports torch at import time: the server and ``mlaas predict`` need only
onnxruntime.
"""
