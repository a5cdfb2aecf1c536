"""A trained torch network -> ``model.onnx``: one input ``features`` (float32, dynamic
batch axis), one output ``probabilities`` -- the sigmoid or softmax is part of the graph,
so onnxruntime alone gives the scores: ``(n, 1)`` (the second class) for binary models,
``(n, classes)`` otherwise.

An export failure (an op ONNX cannot hold) names the layer: every leaf module is
exported alone with the input it saw, and the first that fails is the one reported.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from mlaas_dask.nn.trainer import NetworkError

#: the ONNX graph's input and output names
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


def probability_head(network: Any, outputs: str, n_classes: int, width: int) -> Any:
    """A module giving the bundle's scores from the network's outputs."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: Any) -> Any:
            out = self.network(x)
            if out.dim() == 1:
                out = out.unsqueeze(-1)
            if outputs == "logits":
                out = torch.sigmoid(out) if width == 1 else torch.softmax(out, dim=-1)
            return out[:, -1:] if n_classes == 2 else out

    return Probabilities().eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx's progress prints, warnings and log lines, silenced."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript",
             "onnx_ir")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _export(module: Any, example: Any) -> Any:
    import torch

    with _quiet():
        return torch.onnx.export(module, (example,), dynamo=True, verbose=False,
                                 input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 dynamic_shapes=({0: torch.export.Dim("batch")},),
                                 report=False)


def to_onnx(network: Any, n_features: int, outputs: str, n_classes: int, width: int,
            path: str) -> tuple[bytes, int]:
    """The ONNX bytes of the network with its probability head, and the opset.

    Raises
    ------
    NetworkError
        When torch cannot export the network to ONNX, naming the layer at fault.
    """
    import torch

    network = network.eval().cpu()
    head = probability_head(network, outputs, n_classes, width)
    example = torch.zeros(3, n_features)
    try:
        program = _export(head, example)
    except Exception as err:  # noqa: BLE001 - any exporter failure, explained below
        layer, cause = failing_layer(network, example, err)
        raise NetworkError(
            f"The network of {path} cannot be stored as ONNX: {layer} {cause}. Replace it "
            "with operations ONNX supports (see torch.onnx's list of supported operators), "
            "then train again; no bundle was written.", layer=layer) from None
    proto = program.model_proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return proto.SerializeToString(), int(opset)


def failing_layer(network: Any, example: Any, err: BaseException) -> tuple[str, str]:
    """The first leaf module (in the order they run) that cannot be exported alone, and
    why; the network's own forward when every leaf exports."""
    import torch

    inputs: dict[str, Any] = {}
    hooks = []
    for name, module in network.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: inputs.setdefault(name, args)))
    try:
        with torch.no_grad():
            network(example)
    except Exception:  # noqa: BLE001 - the export error below says more
        pass
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(network.named_modules())
    for name, args in inputs.items():
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            continue
        try:
            with _quiet():
                torch.onnx.export(modules[name], args, dynamo=True, verbose=False,
                                  report=False)
        except Exception as leaf_err:  # noqa: BLE001 - this leaf is the culprit
            return (f"layer {name!r} ({type(modules[name]).__name__})",
                    _cause(leaf_err))
    return f"the forward() of {type(network).__name__}", _cause(err)


def _cause(err: BaseException) -> str:
    """The unsupported operator, or the error's first line."""
    text = f"{err} {err.__cause__ or ''}"
    ops = sorted(set(re.findall(r"aten[.:]{1,2}([A-Za-z_0-9]+)", text)) - {"default"})
    if ops:
        return f"uses {', '.join(ops)}, which the ONNX exporter does not support"
    first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return f"failed to export ({first[:200]})"


def check_onnx(model: bytes, network: Any, sample: np.ndarray, outputs: str,
               n_classes: int, width: int) -> float:
    """The largest difference between onnxruntime's and torch's scores on ``sample``."""
    import onnxruntime
    import torch

    head = probability_head(network.eval().cpu(), outputs, n_classes, width)
    with torch.no_grad():
        expected = head(torch.from_numpy(np.ascontiguousarray(sample))).numpy()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: np.ascontiguousarray(sample, np.float32)})[0]
    return float(np.max(np.abs(got - expected))) if len(sample) else 0.0
