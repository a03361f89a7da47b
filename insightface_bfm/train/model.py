"""``BFMModel``: the networks of one training mode, and where each loss term is computed.

    bfm        classifier C (Table I), full extractor E_F + head_full, partial extractor E_P + head_partial
    baseline1  one extractor ``full`` + ``head_full``, ArcFace on unmasked faces
    baseline2  one extractor ``full`` + ``head_full``, ArcFace on unmasked and masked faces

``forward(x, x_masked, labels)`` returns the loss terms of the paper for one batch of pairs,
each computed by its function in ``insightface_bfm.losses`` (named as ``losses.TERMS``); the
trainer weights and sums them with ``losses.total_loss`` (eq. 7). Doing the whole computation
in ``forward`` lets DistributedDataParallel see every network in one call.

Inference helpers (``mask_probability``, ``embed``) follow the paper's routing: a pair is
embedded with E_P when either face is classified masked, else with E_F.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from torch import nn

from .. import losses
from ..errors import BFMError
from ..nets import MaskClassifier, PartialFC, UpperFace, get_backbone, make_head
from .recipe import Recipe

# safetensors key prefix of each part (CONTRACT); baselines keep their one model under "full."
PARTS = ("classifier", "full", "partial", "head_full", "head_partial")


class BFMModel(nn.Module):
    def __init__(self, recipe: Recipe | dict, num_classes: int):
        super().__init__()
        if isinstance(recipe, dict):
            recipe = Recipe.from_dict(recipe, check_paths=False)
        self.mode = recipe.mode
        self.num_classes = int(num_classes)
        cfg = recipe.model
        self.embedding_size = cfg.embedding_size
        self.pair_reduction = recipe.loss.pair_reduction  # eqs. 1 and 5: "sum" as printed, or "mean"

        def extractor():
            return get_backbone(cfg.backbone, embedding_size=cfg.embedding_size, dropout=cfg.dropout,
                                **cfg.backbone_options)

        def head():
            margin = {} if cfg.m is None else {"m": cfg.m}
            if cfg.partial_fc:
                return PartialFC(cfg.embedding_size, self.num_classes, margin=cfg.head, s=cfg.s,
                                 sample_rate=cfg.sample_rate, **margin)
            return make_head(cfg.head, cfg.embedding_size, self.num_classes, s=cfg.s, **margin)

        # E_F and E_P (and their heads) start from the same random weights, which are also those
        # of a baseline's one model under the same seed: a comparison then differs by the method
        # only, not by the luck of the initialisation.
        start = torch.random.get_rng_state()
        self.full = extractor()
        self.head_full = head()
        if self.mode == "bfm":
            torch.random.set_rng_state(start)
            self.partial = extractor()
            self.head_partial = head()
            self.classifier = MaskClassifier() if cfg.classifier else None
        else:
            self.classifier = self.partial = self.head_partial = None
        # model.partial_rows: what E_P sees of a crop (None: all of it, as the paper)
        self.partial_view = None
        if cfg.partial_rows is not None and self.partial is not None:
            self.partial_view = UpperFace(cfg.partial_rows)
        self.frozen_bn = False  # every BatchNorm stays in eval mode (init.freeze_bn)
        self.frozen_full = False  # E_F neither trains nor updates its statistics (init.freeze_full)

    # -- training --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, x_masked: torch.Tensor, labels: torch.Tensor,
                classifier_input: torch.Tensor | None = None) -> dict:
        """Loss terms of one batch of pairs (x, masked x) of normalised RGB (B,3,112,112).

        ``classifier_input``: what C sees instead of ``cat([x, x_masked])`` (e.g. photo-varied copies).
        """
        if self.mode == "baseline1":
            # One model, unmasked faces only (eq. 2).
            return {"full": _arcface(self.head_full, self.full(x), labels)}
        if self.mode == "baseline2":
            # One model on unmasked and masked faces: ArcFace on both copies (eq. 5's form).
            f, f_masked = self.full(torch.cat([x, x_masked])).chunk(2)
            return {"full": _arcface_pair(self.head_full, f, f_masked, labels, self.pair_reduction)}
        terms = {}
        if self.classifier is not None:
            # eq. 1: C learns unmasked -> 0, masked -> 1 (one pass over both copies).
            if classifier_input is None:
                classifier_input = torch.cat([x, x_masked])
            logits, logits_masked = self.classifier(classifier_input).chunk(2)
            terms["mask"] = losses.mask_loss(logits, logits_masked, self.pair_reduction)
        # eq. 2: E_F on unmasked faces only (a frozen E_F has nothing to learn: skip its forward pass).
        if not self.frozen_full:
            terms["full"] = _arcface(self.head_full, self.full(x), labels)
        # eqs. 4 and 5: E_P on x and masked x, in one pass (BatchNorm sees both copies together).
        p, p_masked = self.partial_extractor(torch.cat([x, x_masked])).chunk(2)
        terms["guided"] = losses.guided_loss(p, p_masked)
        terms["partial"] = _arcface_pair(self.head_partial, p, p_masked, labels, self.pair_reduction)
        return terms

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for module in self.modules():
                if self.frozen_bn and isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            if self.frozen_full:
                self.full.eval()
        return self

    def freeze_full(self) -> None:
        self.frozen_full = True
        self.full.requires_grad_(False)
        self.head_full.requires_grad_(False)
        self.train(self.training)

    def freeze_bn(self) -> None:
        self.frozen_bn = True
        self.train(self.training)

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def mask_probability(self, x: torch.Tensor) -> torch.Tensor:
        """P(masked) per face from C (class index 1)."""
        if self.classifier is None:
            raise BFMError(f"a {self.mode} model has no mask classifier")
        return self.classifier(x).float().softmax(dim=1)[:, MaskClassifier.MASKED]

    @torch.no_grad()
    def embed(self, x: torch.Tensor, extractor: str = "full") -> torch.Tensor:
        """L2-normalised embeddings from ``full`` (E_F, or the baselines' model) or ``partial`` (E_P)."""
        net = self.partial_extractor if extractor == "partial" and self.partial is not None else self.full
        return nn.functional.normalize(net(x).float(), dim=1)

    @property
    def partial_extractor(self) -> nn.Module | None:
        """E_P as it embeds a crop: with ``model.partial_rows``, the upper-face view and then E_P
        (what training, evaluation and export run); otherwise E_P itself. ``self.partial`` alone is
        the network whose weights train and load."""
        if self.partial is None or self.partial_view is None:
            return self.partial
        return nn.Sequential(self.partial_view, self.partial)

    def extractors(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in ("full", "partial") if getattr(self, name) is not None}


def _arcface(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 2 through a margin head, or through Partial FC (which computes the same loss itself)."""
    if isinstance(head, PartialFC):
        return head(features, labels)
    return losses.arcface_full_loss(head(features, labels), labels)


def _arcface_pair(head: nn.Module, f: torch.Tensor, f_masked: torch.Tensor, labels: torch.Tensor,
                  pair_reduction: str):
    """Eq. 5 through a margin head, or through Partial FC: its mean over the 2B samples of both
    copies is the "mean" form of losses.arcface_partial_loss, twice that the printed "sum"."""
    if isinstance(head, PartialFC):
        mean = head(torch.cat([f, f_masked]), torch.cat([labels, labels]))
        return mean if pair_reduction == "mean" else 2.0 * mean
    return losses.arcface_partial_loss(head(f, labels), head(f_masked, labels), labels, pair_reduction)


# -- checkpoints and initial weights ----------------------------------------------------------

def load_checkpoint(path, map_location: str = "cpu") -> tuple[BFMModel, dict]:
    """Rebuild the model of a checkpoint (a checkpoint dir, run dir or model.safetensors).

    Returns (model in eval mode, the recipe dict it was trained with).
    """
    from .checkpoint import load_weights, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    try:
        recipe = yaml.safe_load((ckpt / "recipe.yaml").read_text())
    except OSError:
        raise BFMError(f"{ckpt}: no recipe.yaml beside model.safetensors") from None
    weights = load_weights(ckpt)
    if "head_full.weight" not in weights:
        raise BFMError(f"{ckpt}: model.safetensors has no head_full.weight (not a BFM checkpoint)")
    model = BFMModel(recipe, num_classes=weights["head_full.weight"].shape[0])
    # Imported here: the ONNX graph module needs the onnx package, which training alone does not.
    from ..export.graph_module import SKELETON_KEY, OnnxGraphModule

    for role in ("full", "partial"):
        if f"{role}.{SKELETON_KEY}" in weights:
            # an extractor fine-tuned from a generic ONNX import: its graph travels in the weights
            rebuilt = OnnxGraphModule.from_state_dict(weights, prefix=f"{role}.", source=str(ckpt))
            setattr(model, role, rebuilt)
    load_strict(model, weights, f"{ckpt}")
    return model.to(map_location).eval(), recipe


def load_strict(module: nn.Module, state: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first differing key."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. '{unexpected[0]}'")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of '{k}' is {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        raise BFMError(f"{what}: weights do not fit the network: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def initial_weights(spec: str, role: str) -> dict[str, torch.Tensor]:
    """The state dict for part ``role`` (classifier | full | partial) from ``spec``:

    ``onnx:PATH``      an ONNX file imported by insightface_bfm.export.from_onnx
    ``mxnet:PREFIX,EPOCH`` an MXNet checkpoint, converted by ``import_mxnet``, then imported as ONNX
    ``*.pth``/``*.pt`` an arcface_torch ``backbone.pth`` (a plain state dict; loaded weights_only)
    anything else      a BFM checkpoint (dir, run dir or model.safetensors): its ``role.`` part, or
                       its ``full.`` part when it has no such part (E_P from a baseline model)
    """
    onnx_path = _onnx_path(spec)
    if onnx_path is not None:
        from ..export.from_onnx import import_onnx

        return import_onnx(onnx_path).state_dict()
    if Path(spec).suffix in (".pth", ".pt"):
        try:
            state = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise BFMError(f"{spec}: cannot load as a torch state dict ({type(e).__name__}: {e})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise BFMError(f"{spec}: expected a state dict, got {type(state).__name__}")
        # DataParallel / DDP saves carry a "module." prefix
        return {k.removeprefix("module."): v for k, v in state.items()}
    from .checkpoint import load_weights

    weights = load_weights(spec)
    for prefix in (f"{role}.", "full."):
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if part:
            return part
    raise BFMError(f"{spec}: the checkpoint has no '{role}.' weights")


def initialise(model: BFMModel, init) -> list[str]:
    """Load ``init.classifier/full/partial`` into ``model``; returns what was loaded, for the log."""
    loaded = []
    for role in ("classifier", "full", "partial"):
        spec = getattr(init, role)
        if spec is None:
            continue
        target = getattr(model, role)
        if target is None:
            raise BFMError(f"init.{role}: a {model.mode} model has no {role} network")
        imported = _import_extractor(spec, role, model.embedding_size)
        if imported is not None and imported.bfm_architecture.get("backbone") == "onnx":
            # not a nets architecture: the imported graph itself becomes the extractor
            setattr(model, role, imported)
        else:
            state = imported.state_dict() if imported is not None else initial_weights(spec, role)
            load_strict(target, state, f"init.{role} {spec}")
        loaded.append(f"{role} <- {spec}")
    if init.trainable is not None:
        loaded.append(_train_only(model, init.trainable))
    if init.trainable_share is not None:
        loaded.append(_train_last_share(model, init.trainable_share))
    if init.freeze_full:
        model.freeze_full()
    if init.freeze_bn:
        model.freeze_bn()
    return loaded


def _import_extractor(spec: str, role: str, embedding_size: int) -> nn.Module | None:
    """``onnx:PATH`` / ``mxnet:PREFIX,EPOCH`` for E_F / E_P imported once (None for other specs).
    A graph that is not an arcface_torch architecture (e.g. a MobileFaceNet from another code base)
    comes back as the generic ``OnnxGraphModule`` and is used as the extractor itself, so its size
    must fit."""
    onnx_path = _onnx_path(spec) if role != "classifier" else None
    if onnx_path is None:
        return None
    from ..export.from_onnx import import_onnx

    module = import_onnx(onnx_path)
    if module.bfm_architecture.get("backbone") == "onnx" and module.embedding_size != embedding_size:
        raise BFMError(f"init.{role} {spec}: the graph embeds to {module.embedding_size} dimensions but "
                       f"model.embedding_size is {embedding_size}")
    return module


def _onnx_path(spec: str) -> str | None:
    """The ONNX file behind ``onnx:PATH`` or ``mxnet:PREFIX,EPOCH`` (converted once, then cached)."""
    if spec.startswith("onnx:"):
        return spec[5:]
    if spec.startswith("mxnet:"):
        from ..export.from_mxnet import import_mxnet

        return str(import_mxnet(spec))
    return None


def _train_only(model: BFMModel, patterns: list[str]) -> str:
    """``init.trainable``: extractor parameters whose name (within E_F / E_P / the baseline model)
    matches one of the regular expressions keep training, the others are frozen. Fine-tuning only
    the last layers of a pretrained network this way also skips the backward pass of the rest."""
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as e:
        raise BFMError(f"init.trainable: {e.pattern!r} is not a regular expression ({e})") from None
    kept, total, used = 0, 0, set()
    for net in model.extractors().values():
        for name, param in net.named_parameters():
            hits = [p.pattern for p in compiled if p.search(name)]
            used.update(hits)
            param.requires_grad_(bool(hits))
            kept += param.numel() if hits else 0
            total += param.numel()
    unused = [p for p in patterns if p not in used]
    if unused:
        raise BFMError(f"init.trainable: {unused[0]!r} matches no extractor parameter")
    return f"trainable extractor parameters: {kept:,} of {total:,} ({', '.join(patterns)})"


def _train_last_share(model: BFMModel, share: float) -> str:
    """``init.trainable_share``: in each extractor, the last parameter tensors (in the order the
    network defines them, i.e. from the embedding backwards) train, up to the first one that brings
    them to ``share`` of its parameters; the earlier ones are frozen. Unlike name patterns this
    fits any network (an imported ONNX graph, an IResNet, a MobileFaceNet)."""
    kept, total = 0, 0
    for net in model.extractors().values():
        params = list(net.parameters())
        size = sum(p.numel() for p in params)
        count = 0
        for param in reversed(params):
            param.requires_grad_(count < share * size)
            count += param.numel() if param.requires_grad else 0
        kept, total = kept + count, total + size
    # the last tensor may overshoot the share (a small network has few, large tensors): say both
    return (f"trainable extractor parameters: {kept:,} of {total:,} ({kept / max(total, 1):.0%}: the last "
            f"tensors of each extractor up to init.trainable_share {share:g})")

