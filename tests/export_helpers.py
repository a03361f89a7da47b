"""Helpers shared by the export and import tests (torch + ONNX Runtime)."""

import numpy as np
import onnxruntime as ort
import torch


def randomise(module, seed=0):
    """Non-trivial BatchNorm statistics and PReLU slopes, so that BN folding really matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight.requires_grad:  # an identity BN of an import keeps its weight of 1
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return module.eval()


def session(path_or_bytes):
    """A one-thread CPU ONNX Runtime session on a file path or model bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def faces(n, seed=0):
    """Random normalised (n,3,112,112) inputs."""
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 3, 112, 112)).astype(np.float32))
