"""``train.onnxruntime_frozen_layers``: the frozen first layers of an imported ONNX extractor run
through ONNX Runtime on a CPU.

A build fine-tunes only the last layers of an imported recogniser (``init.trainable_share``), so
most of each training forward pass is the frozen layers before the first trainable weight: no
gradient flows there (the input needs none), and on a CPU ONNX Runtime computes them faster than
torch (the build's E_P, MobileFaceNet's first 76 of 98 nodes at batch 128 on 2 AMD EPYC cores:
E_P's forward 1.14 s -> 1.03 s in a build step; 1.8 s -> 1.1 s alone). The torch graph takes over
at the cut with the boundary activations, so gradients, the trainable layers and everything after
them are unchanged; the activations differ from torch's by float rounding only (about 1e-5).

The cut is the first node that reads a weight needing a gradient, or a BatchNormalization (whose
training-mode statistics depend on the batch and move). The prefix graph holds the weights as they
were when it was built: it is rebuilt when one of them changes in place (a checkpoint loaded, DDP's
broadcast), seen from the tensors' version counters.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..export.graph_module import OnnxGraphModule

# nodes that end the prefix even without a trainable weight: batch statistics in training mode
_BATCH_DEPENDENT = {"BatchNormalization"}


class FrozenPrefix:
    """The nodes of ``module`` before ``cut`` as an ONNX Runtime session.

    ``module(x)`` calls it (``OnnxGraphModule.forward``) while training on a CPU with an input that
    needs no gradient; it returns the activations later nodes read, by name.
    """

    def __init__(self, module: OnnxGraphModule, cut: int, outputs: list[str], threads: int):
        self.module, self.cut, self.outputs, self.threads = module, cut, outputs, threads
        nodes = module._nodes[:cut]
        self._names = sorted({i for n in nodes for i in n.inputs if i in module._tensor_keys})
        self._tensors = [getattr(module, module._tensor_keys[name]) for name in self._names]
        self._session = self._versions = None

    @classmethod
    def of(cls, module: OnnxGraphModule, threads: int) -> FrozenPrefix | None:
        """The prefix of ``module`` as its parameters stand now; None where it is empty (the first
        node already trains or is batch-dependent) or hands anything but float activations on."""
        tensors = {name: getattr(module, key) for name, key in module._tensor_keys.items()}
        trainable = {name for name, t in tensors.items()
                     if isinstance(t, torch.nn.Parameter) and t.requires_grad}
        nodes = module._nodes
        cut = next((k for k, n in enumerate(nodes)
                    if n.op in _BATCH_DEPENDENT or any(i in trainable for i in n.inputs)), len(nodes))
        if cut == 0 or cut == len(nodes):  # nothing frozen, or nothing trains (no training forward)
            return None
        produced = {o for n in nodes[:cut] for o in n.outputs}
        read_later = {i for n in nodes[cut:] for i in n.inputs}
        outputs = sorted(produced & read_later)
        # every boundary tensor must carry the batch (shape arithmetic stays in torch's graph)
        dynamic = {o for n in nodes[:cut] if n.dynamic for o in n.outputs}
        if not outputs or not set(outputs) <= dynamic:
            return None
        return cls(module, cut, outputs, threads)

    def describe(self) -> str:
        return f"{self.cut} of {len(self.module._nodes)} nodes"

    def _graph(self) -> onnx.ModelProto:
        m = self.module
        nodes = []
        for node in m._nodes[:self.cut]:
            attrs = {k: numpy_helper.from_array(np.asarray(v)) if isinstance(v, np.ndarray) else v
                     for k, v in node.attrs.items()}
            nodes.append(helper.make_node(node.op, node.inputs, node.outputs,
                                          name=node.name or None, **attrs))
        weights = [numpy_helper.from_array(t.detach().cpu().contiguous().numpy(), name)
                   for name, t in zip(self._names, self._tensors)]
        graph = helper.make_graph(
            nodes, "frozen_prefix",
            [helper.make_tensor_value_info(m.input_name, onnx.TensorProto.FLOAT, [None, *m.input_shape[1:]])],
            [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in self.outputs],
            weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", m.opset)])

    def _current(self):
        """The session for the weights as they are now (rebuilt after an in-place change)."""
        versions = [t._version for t in self._tensors]
        if self._session is None or versions != self._versions:
            import onnxruntime

            from ..runtime import CPU, create_session

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            self._session = create_session(self._graph().SerializeToString(), [CPU], options,
                                           name=f"{self.module.source} (frozen first layers)")
            self._versions = versions
        return self._session

    def usable(self, x: torch.Tensor) -> bool:
        """Whether this call may take the prefix: a CPU input needing no gradient, and every prefix
        weight still frozen (``requires_grad`` may be switched after the prefix was built)."""
        return (x.device.type == "cpu" and not x.requires_grad and not torch.jit.is_tracing()
                and not any(t.requires_grad for t in self._tensors))

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values = self._current().run(self.outputs, {self.module.input_name: x.detach().contiguous().numpy()})
        out = {name: torch.from_numpy(v) for name, v in zip(self.outputs, values)}
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # the torch layers after the cut run in the caller's layout (train.channels_last_cpu)
            out = {name: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                   for name, t in out.items()}
        return out


def attach(model: torch.nn.Module, threads: int) -> list[str]:
    """Give every imported ONNX extractor of ``model`` its frozen prefix; one line per extractor."""
    lines = []
    for role, net in model.extractors().items():
        if not isinstance(net, OnnxGraphModule):
            continue
        prefix = FrozenPrefix.of(net, threads)
        net.frozen_prefix = prefix
        if prefix is not None:
            lines.append(f"{role}: its frozen first {prefix.describe()} run through ONNX Runtime "
                         "(train.onnxruntime_frozen_layers)")
    return lines
