"""Reading the metadata properties of an ONNX file (numpy/onnx only, no torch)."""

from __future__ import annotations

import onnx


def read_metadata(path) -> dict[str, str]:
    """The metadata properties (``role``, ``output``, ``embedding_size``, ``recipe`` ...) of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
