"""A PyTorch model file: ``model(n_features)`` returns the network (a torch.nn.Module).

Used by ``examples/sample-torch.yaml``. One output (a logit) for the two classes: mlaas
trains it with an event-weighted binary cross-entropy, stores it as ONNX with the
sigmoid in the graph (model.onnx; weights.safetensors for further training) and serves
it with onnxruntime. Define ``loss()`` or ``optimizer(params)`` here to replace the
defaults (BCE on logits; the job's model.optimizer and learning_rate).
"""

import torch


def model(n_features: int) -> torch.nn.Module:
    """Three hidden layers of 128 units."""
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 1),
    )
