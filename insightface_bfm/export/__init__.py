"""ONNX export of trained BFM networks, import of ONNX recognisers for fine-tuning, and conversion
of legacy insightface MXNet checkpoints.

- ``export_onnx(module, path, role)``: one network (role mask_classifier | full | partial) to an
  insightface-style ONNX file (dynamic batch, static 112x112, normalisation outside the graph).
- ``export_checkpoint(checkpoint, out_dir)``: mask_classifier.onnx, full.onnx, partial.onnx.
- ``import_onnx(path)``: an ONNX recogniser as a trainable module (our nets class when the file is
  an arcface_torch IResNet/MobileFaceNet, else a generic graph interpreter).
- ``import_mxnet("PREFIX,EPOCH", out=None)``: an MXNet checkpoint converted to such an ONNX file
  (numpy and onnx only: works in the inference install); returns the file's path.

Names are imported on first use: the export and import modules need torch (the ``[train]``
extra), the MXNet converter does not, and the inference path never imports this package's torch.
"""

from importlib import import_module

_WHERE = {
    "ROLES": "to_onnx",
    "export_checkpoint": "to_onnx",
    "export_onnx": "to_onnx",
    "read_metadata": "metadata",
    "OnnxGraphModule": "graph_module",
    "backbone_from_architecture": "from_onnx",
    "calibrate_batchnorm": "from_onnx",
    "import_onnx": "from_onnx",
    "import_mxnet": "from_mxnet",
    "mxnet_to_onnx": "from_mxnet",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
