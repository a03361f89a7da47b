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

from ..lazy import lazy_names

# Names load lazily, so that ``bfm export --help`` (this package's cli) and the MXNet converter
# work without torch.
_EXPORTS = {
    "ROLES": ".to_onnx",
    "OnnxGraphModule": ".graph_module",
    "backbone_from_architecture": ".from_onnx",
    "calibrate_batchnorm": ".from_onnx",
    "export_checkpoint": ".to_onnx",
    "export_onnx": ".to_onnx",
    "import_onnx": ".from_onnx",
    "import_mxnet": ".from_mxnet",
    "mxnet_to_onnx": ".from_mxnet",
    "read_metadata": ".metadata",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
