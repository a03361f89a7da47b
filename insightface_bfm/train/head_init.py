"""``init.head: centres``: ArcFace heads that start at the class centres of the initial extractor.

A head's weight row ``j`` is identity ``j``'s centre on the unit sphere. Fine-tuning a pretrained
recogniser on a few faces per identity, random rows would spend the whole budget finding the
classes; starting each row at the normalised mean embedding of that identity's (unmasked,
unflipped) faces under the initialised extractor makes the margin loss meaningful from step one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import BFMError


def torch_embedder(extractor: nn.Module, device="cpu", channels_last: bool = False):
    """uint8 BGR crops -> embeddings through the torch extractor (eval mode, no gradients)."""
    from .trainer import to_network_tensor

    @torch.no_grad()
    def embed(crops: np.ndarray) -> torch.Tensor:
        was_training = extractor.training
        extractor.eval()
        x = to_network_tensor(torch.from_numpy(crops)).to(device)
        if channels_last:  # the layout the model was put in (train.channels_last*)
            x = x.contiguous(memory_format=torch.channels_last)
        out = extractor(x).float().cpu()
        extractor.train(was_training)
        return out

    return embed


def onnx_embedder(path: str, rows: int | None = None):
    """The same for an extractor just initialised from ``onnx:PATH``: its file through ONNX Runtime
    (the very weights, about twice as fast as the imported graph in torch on a CPU). ``rows``: E_P's
    upper-face view (``model.partial_rows``), applied to the input as ``UpperFace`` does."""
    from ..evaluation.embedders import OnnxRecognizer

    net = OnnxRecognizer(path)
    return lambda crops: torch.from_numpy(net.session.run(crops, rows=rows)).float()


def class_centres(embed, dataset, num_classes: int, batch_size: int = 128,
                  progress: bool = True) -> torch.Tensor:
    """(num_classes, D) normalised mean embedding of each identity's faces; ``embed`` maps uint8 BGR
    crops (N,112,112,3) to embeddings."""
    from tqdm.auto import tqdm

    sums = None
    counts = np.zeros(num_classes, np.int64)
    for start in tqdm(range(0, len(dataset), batch_size), desc="class centres", unit="batch",
                      disable=not progress, leave=False):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        samples = [s for s in samples if s is not None]  # corrupt images: skipped as in training
        if not samples:
            continue
        emb = nn.functional.normalize(embed(np.stack([img for img, _ in samples])), dim=1).double()
        labels = torch.tensor([label for _, label in samples])
        if sums is None:
            sums = torch.zeros(num_classes, emb.shape[1], dtype=torch.float64)
        sums.index_add_(0, labels, emb)
        counts += np.bincount(labels.numpy(), minlength=num_classes)
    if sums is None or (counts == 0).any():
        missing = int((counts == 0).sum()) if sums is not None else num_classes
        raise BFMError(f"init.head centres: {missing} identities have no readable face to start from")
    return nn.functional.normalize(sums, dim=1).float()


def start_heads_at_centres(model, dataset, init, device="cpu", channels_last: bool = False,
                           progress: bool = True) -> list[str]:
    """Set the weight of every head whose extractor trains to that extractor's class centres
    (``init``: the recipe's init section; an ``onnx:`` extractor is run from its file).

    A frozen E_F's head is never used in training, so it is left as it is. Returns log lines.
    """
    from ..nets import PartialFC
    from .model import _onnx_path

    done = []
    computed = {}
    for net_name, head_name in (("full", "head_full"), ("partial", "head_partial")):
        net, head = getattr(model, net_name, None), getattr(model, head_name, None)
        if net is None or head is None or (net_name == "full" and model.frozen_full):
            continue
        if isinstance(head, PartialFC):
            raise BFMError("init.head centres: not supported with model.partial_fc (sharded centres)")
        if tuple(head.weight.shape) != (model.num_classes, model.embedding_size):
            raise BFMError(f"init.head centres: {head_name} weight has shape {tuple(head.weight.shape)}")
        spec = getattr(init, net_name)
        onnx_file = _onnx_path(spec) if spec is not None else None  # onnx:PATH, or mxnet: converted
        # E_P may see the upper face only (model.partial_rows): its file then gets the same cut input
        rows = model.partial_view.rows if net_name == "partial" and model.partial_view is not None else None
        if onnx_file is not None:
            if (onnx_file, rows) not in computed:
                computed[onnx_file, rows] = class_centres(onnx_embedder(onnx_file, rows), dataset,
                                                          model.num_classes, progress=progress)
            centres = computed[onnx_file, rows]
        else:
            extractor = model.partial_extractor if rows is not None else net
            centres = class_centres(torch_embedder(extractor, device, channels_last), dataset,
                                    model.num_classes, progress=progress)
        head.weight.data.copy_(centres.to(head.weight.device))
        done.append(f"{head_name} <- class centres of {net_name} ({model.num_classes} identities)")
    return done
