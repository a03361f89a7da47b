"""ONNX export of trained BFM networks, and import of ONNX recognisers for fine-tuning (torch).

- ``export_onnx(module, path, role)``: one network (role mask_classifier | full | partial) to an
  insightface-style ONNX file (dynamic batch, static 112x112, normalisation outside the graph).
- ``export_checkpoint(checkpoint, out_dir)``: mask_classifier.onnx, full.onnx, partial.onnx.
- ``import_onnx(path)``: an ONNX recogniser as a trainable module (our nets class when the file is
  an arcface_torch IResNet/MobileFaceNet, else a generic graph interpreter).

Torch lives here: the inference path never imports this package.
"""

from ..lazy import lazy_names

# Names load lazily, so that ``bfm export --help`` (this package's cli) works without torch.
_EXPORTS = {
    "ROLES": ".to_onnx",
    "OnnxGraphModule": ".graph_module",
    "backbone_from_architecture": ".from_onnx",
    "calibrate_batchnorm": ".from_onnx",
    "export_checkpoint": ".to_onnx",
    "export_onnx": ".to_onnx",
    "import_onnx": ".from_onnx",
    "read_metadata": ".to_onnx",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
