"""An MLaaS4HEP model file for Keras 3: ``model(idim)`` builds and compiles the network.

As MLaaS4HEP's own Keras examples, in today's idiom (``import keras``, not TensorFlow's
``tf.keras``). mlaas trains it on Keras' torch backend from the Dask partitions, keeping
the compiled loss and optimizer, and stores it as ONNX::

    mlaas train --from-mlaas4hep params.json --files files.txt --labels labels.txt \\
        --model examples/mlaas4hep_keras_model.py

MLaaS4HEP's ``epochs`` and ``batch_size`` (params.json) become the job's ``model.epochs``
and ``model.batch_size``; ``mlaas train ... --print-job`` shows the equivalent job file.
"""

import keras
from keras import layers


def model(idim: int) -> keras.Model:
    """A binary classifier of ``idim`` input features."""
    ml_model = keras.Sequential([
        keras.Input(shape=(idim,)),
        layers.Dense(64, activation="relu"),
        layers.Dropout(0.1),
        layers.Dense(32, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ])
    ml_model.compile(loss=keras.losses.BinaryCrossentropy(),
                     optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                     metrics=[keras.metrics.BinaryAccuracy(name="accuracy"),
                              keras.metrics.AUC(name="auc")])
    return ml_model
