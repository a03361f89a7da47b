"""ONNX export of trained BFM networks, and import of ONNX recognisers for fine-tuning (torch).

- ``export_onnx(module, path, role)``: one network (role mask_classifier | full | partial) to an
  insightface-style ONNX file (dynamic batch, static 112x112, normalisation outside the graph).
- ``export_checkpoint(checkpoint, out_dir)``: mask_classifier.onnx, full.onnx, partial.onnx.
- ``import_onnx(path)``: an ONNX recogniser as a trainable module (our nets class when the file is
  an arcface_torch IResNet/MobileFaceNet, else a generic graph interpreter).

Torch lives here: the inference path never imports this package.
"""

from .from_onnx import backbone_from_architecture, calibrate_batchnorm, import_onnx
from .graph_module import OnnxGraphModule
from .to_onnx import ROLES, export_checkpoint, export_onnx, read_metadata

__all__ = [
    "ROLES",
    "OnnxGraphModule",
    "backbone_from_architecture",
    "calibrate_batchnorm",
    "export_checkpoint",
    "export_onnx",
    "import_onnx",
    "read_metadata",
]
