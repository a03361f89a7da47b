"""Training recipes: the YAML schema, checked at the door.

A recipe is plain data (one dataclass per section). ``load_recipe`` reads the YAML, applies
``--set key=value`` overrides and validates every key, type and value *before* any work
starts, so a typo costs a second, not an epoch: an unknown key fails with the file, the key
path and the closest valid name (difflib), a wrong type or value names its key path.

Sections and what they drive:
    mode / compare  what to train: ``bfm`` (C + E_F + E_P), ``baseline1`` (one ArcFace model on
                    unmasked faces), ``baseline2`` (one ArcFace model on unmasked and masked
                    faces); ``compare: [baseline1, baseline2, bfm]`` trains each in turn and
                    prints the Table-II comparison on ``eval.holdout`` (the quickstart).
    model           backbone and margin head of each extractor, mask classifier on/off
    data            where faces come from, loader workers, the on-the-fly masks
    optim           SGD and its step schedule (paper defaults)
    loss            weight of each term of eq. 7
    init            fine-tuning: initial weights of C / E_F / E_P, freezing
    train           run settings: device, AMP, compile, seed, output, logging, checkpoints
    eval            verification on held-out identities, per case
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import PackError, RecipeError
from ..evaluation.verification import THRESHOLD_RULES

MODES = ("bfm", "baseline1", "baseline2")
BACKBONES = ("r18", "r34", "r50", "r100", "mbf")


def _opt(default, **rules):
    """A field with its validation rules: choices=, min=, max= (checked by ``_validate``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


LOCAL = "<local>"  # stands for a folder of the machine that trained, built or exported
_SPEC_PREFIXES = ("onnx:", "mxnet:")  # init specs that carry a path (InitSection)


def portable_paths(value):
    """``value`` (a recipe dict, or any record of dicts, lists and strings) with every absolute path,
    bare or after ``onnx:`` / ``mxnet:``, cut to ``<local>/`` + its last part; the rest as is. What
    leaves the machine (exported ONNX files, published packs) carries it instead of the local
    folders, which say nothing to anyone else and may say too much."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v) for v in value]
    if not isinstance(value, str):
        return value
    prefix = next((p for p in _SPEC_PREFIXES if value.startswith(p)), "")
    path = value[len(prefix):]
    if not (os.path.isabs(path) or path.startswith("~")):
        return value
    return f"{prefix}{LOCAL}/{Path(path.rstrip('/')).name}"


@dataclass
class ModelSection:
    # Extractor network (E_F, E_P, the baselines' model): IResNet-18/34/50/100 or MobileFaceNet.
    backbone: str = _opt("r50", choices=BACKBONES)
    # Length of the face embedding each extractor outputs.
    embedding_size: int = _opt(512, min=2)
    # Dropout before the embedding layer (arcface_torch uses 0 for CASIA-sized sets).
    dropout: float = _opt(0.0, min=0.0, max=1.0)
    # Extra keyword arguments for get_backbone (e.g. a reduced width for the quickstart).
    backbone_options: dict = _opt({})
    # Margin head of each extractor: ArcFace (the paper, eq. 3) or CosFace.
    head: str = _opt("arcface", choices=("arcface", "cosface"))
    # Scale of the margin head's logits (the paper: 64).
    s: float = _opt(64.0, min=0.0)
    # Margin; None takes the head's default (0.5 for ArcFace, 0.35 for CosFace).
    m: float | None = _opt(None, min=0.0)
    # Partial FC (insightface_bfm.nets.PartialFC): class centres sharded over the torchrun
    # processes, and with sample_rate < 1 only that fraction of them scored per step.
    partial_fc: bool = False
    # Partial FC: share of the class centres scored per step (1 = all).
    sample_rate: float = _opt(1.0, min=0.001, max=1.0)
    # The mask classifier C (Table I); bfm mode only.
    classifier: bool = True
    # E_P sees only the top N rows of the 112x112 crop, the rest mid-grey (nets/upper_face.py; a
    # named deviation, null = the whole crop, as the paper). Part of partial.onnx once exported.
    # Modes without E_P ignore it (as they ignore C's options), so one --set serves a comparison.
    partial_rows: int | None = _opt(None, min=1, max=111)


@dataclass
class DataSection:
    # Image folder, insightface RecordIO dir or .rec, or "synthetic:N_IDS:IMGS_PER_ID[:SEED]".
    path: str | None = None
    # DataLoader worker processes that decode images (0 = in the training process).
    num_workers: int = _opt(4, min=0)
    # Mask types drawn on the fly: names of insightface_bfm.masks.MASK_TYPES or MASK_FAMILIES
    # (None = every mask type), and the opt-in lower-face occluders (OCCLUDER_TYPES: hand, scarf,
    # object, or the family "occluder"). A name listed twice is drawn twice as often.
    mask_types: list[str] | None = None
    # Probability that the "masked x" of a pair really gets a mask (the paper: every one).
    mask_prob: float = _opt(1.0, min=0.0, max=1.0)
    # Where the masks sit: MaskAugment draws them at the ArcFace template's 5 points moved by a
    # random similarity and point noise, scaled by this factor (1.0 = the default: up to 4 deg of
    # rotation, 4% of scale and 1.5 px of shift, point noise of std 0.7 px; 0 = exactly the
    # template). Real faces are not all at the template (pose, detector error), and a classifier
    # trained on masks at exactly one place misses real ones; larger values place masks more variously.
    mask_kps_jitter: float = _opt(1.0, min=0.0, max=10.0)
    # Colours of the trainer's masks: "own" (each type its own palette, the default) or "any" (every
    # type drawn in the colours of all types: black surgical masks, coloured KN95s), so that colour
    # is not the cue of one family.
    mask_colours: str = _opt("own", choices=("own", "any"))
    # Share of masks worn low (under the nose), as people do (random_style's worn_low). 0 = none.
    mask_worn_low: float = _opt(0.0, min=0.0, max=1.0)
    # Light the masks: a soft contact shadow along each outline and a specular sheen on
    # synthetic fabrics (surgical, N95, KN95, photo), of random strength (random_style's lighting).
    mask_lighting: bool = False
    # Random horizontal flip of the pair (as arcface_torch does), on the batch device.
    flip: bool = True
    # Share of the mask classifier's inputs given generic photo variation (exposure, grey, blur,
    # low resolution, noise; train/augment.py) so that C holds on real photos. C's inputs only:
    # E_F and E_P train on the pair as the paper has it. 0 = the paper's setting.
    classifier_photo_aug: float = _opt(0.0, min=0.0, max=1.0)
    # Share of masks worn low in C's further steps (optim.classifier_steps > 1) only; None = as
    # mask_worn_low. Real masks are often pulled under the nose; E_P's masks stay mask_worn_low's.
    classifier_worn_low: float | None = _opt(None, min=0.0, max=1.0)
    # Decode every image once and keep them in memory (small sets only, e.g. generated faces).
    cache: bool = False


@dataclass
class OptimSection:
    # SGD learning rate at the start (after warm-up; the paper: 0.1).
    lr: float = _opt(0.1, min=0.0)
    # SGD momentum (the paper: 0.9).
    momentum: float = _opt(0.9, min=0.0, max=1.0)
    # SGD weight decay (the paper: 5e-4).
    weight_decay: float = _opt(5e-4, min=0.0)
    # Global batch of pairs per step, over all processes (split evenly under torchrun).
    batch_size: int = _opt(128, min=1)
    # Passes over the training set (the paper: 100).
    epochs: int = _opt(100, min=1)
    # Epochs at which the learning rate is multiplied by gamma.
    milestones: list[int] = _opt([30, 60, 90])
    # Factor applied to the learning rate at each milestone (the paper: 0.1).
    gamma: float = _opt(0.1, min=0.0)
    # Linear warm-up from 0 over this many epochs (may be fractional).
    warmup_epochs: float = _opt(0.0, min=0.0)
    # Max global L2 norm of the gradients; None = no clipping.
    clip_grad: float | None = _opt(None, min=0.0)
    # The mask classifier C (bfm with model.classifier); deviations from the paper, off (1 and 0)
    # in its recipes. C is trained from scratch while E_P is fine-tuned: on a short budget it is still
    # learning when E_P is done, and at a constant lr its last weights bounce (trained alone, its
    # specificity moved by half a point between checkpoints 300 steps apart). classifier_steps:
    # C's SGD steps per batch (the first is eq. 7's joint step; each further one is eq. 1 alone on
    # a fresh mask draw of the same faces; the extractors are untouched by them unless clip_grad
    # or fp16 couples the steps: classifier_training.py). classifier_ema: C's saved weights are
    # an exponential moving average of its weights over its steps (0 = the last weights). Modes
    # without C ignore both (as data.classifier_photo_aug), so one override serves a comparison.
    classifier_steps: int = _opt(1, min=1, max=16)
    # Decay of the moving average of C's weights that is saved, evaluated and exported (see
    # classifier_steps); 0 = C's last weights (the paper).
    classifier_ema: float = _opt(0.0, min=0.0, max=0.9999)


@dataclass
class LossSection:
    """Weights of the terms of eq. 7 (the paper: all 1), named as insightface_bfm.losses.TERMS."""

    mask: float = _opt(1.0, min=0.0)  # eq. 1, classifier C
    full: float = _opt(1.0, min=0.0)  # eq. 2, ArcFace of E_F (of the single model in the baselines)
    guided: float = _opt(1.0, min=0.0)  # eq. 4, E_P(masked x) pulled onto E_P(x)
    partial: float = _opt(1.0, min=0.0)  # eq. 5, ArcFace of E_P on x and masked x
    # Eqs. 1 and 5 (and baseline 2's loss of the same form) as printed sum the term on x and the
    # term on masked x per sample ("sum"); "mean" halves them, keeping eq. 5 on eq. 2's scale.
    # A deviation from the paper: the recipes whose measured tables were made with it say so.
    pair_reduction: str = _opt("sum", choices=("sum", "mean"))


@dataclass
class InitSection:
    """Initial weights: a checkpoint dir / run dir / model.safetensors, an arcface_torch
    backbone ``.pth``, ``onnx:PATH`` (imported with insightface_bfm.export.from_onnx), or
    ``mxnet:PREFIX,EPOCH`` (a legacy MXNet checkpoint, converted to ONNX, then imported the same way)."""

    # Initial weights of C (null = random, as the paper).
    classifier: str | None = None
    # Initial weights of E_F (and of the baselines' single model); null = random.
    full: str | None = None
    # Initial weights of E_P; null = random.
    partial: str | None = None
    # Keep E_F fixed (a pretrained recogniser used as it is while E_P and C train).
    freeze_full: bool = False
    # Regular expressions over extractor parameter names (without the 'full.' / 'partial.' prefix):
    # only matching ones train, the rest stay frozen (fine-tune the last layers only). None = all.
    trainable: list[str] | None = None
    # The same by size, for any network: only the last parameter tensors (in the network's order)
    # train, up to the first one that brings them to this share of the extractor's parameters.
    trainable_share: float | None = _opt(None, min=0.0, max=1.0)
    # Keep every BatchNorm in eval mode (running statistics frozen; affine weights still train).
    freeze_bn: bool = False
    # ArcFace heads: random, or "centres": each identity's normalised mean embedding under the
    # initialised extractor (train/head_init.py), so a fine-tune starts with its classes found.
    head: str = _opt("random", choices=("random", "centres"))


@dataclass
class TrainSection:
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: the local rank's GPU)
    # Mixed precision on the GPU: bf16, or fp16 with loss scaling; none = float32.
    amp: str = _opt("none", choices=("none", "bf16", "fp16"))
    # channels_last memory format on CUDA (faster convolutions with AMP).
    channels_last: bool = False
    # channels_last on the CPU too (off by default: torch 2.13's oneDNN backward crashed on some
    # narrow convolutions in that layout; MobileFaceNet's depthwise ones run ~4x faster in it)
    channels_last_cpu: bool = False
    # On the CPU, an imported ONNX extractor's frozen first layers (up to its first trainable weight;
    # init.trainable_share) run through ONNX Runtime, faster there than torch (the build's E_P
    # forward: 1.14 -> 1.03 s per step); the gradients are the same, the activations differ by
    # float rounding (~1e-5). train/frozen_prefix.py.
    onnxruntime_frozen_layers: bool = False
    # torch.compile the networks (GPU; the first steps are slower while it compiles).
    compile: bool = False
    # SyncBatchNorm under torchrun (GPU only: torch has no CPU implementation).
    sync_bn: bool = False
    # Seed of weights, data order, flips and masks: the same seed trains the same model on one machine.
    seed: int = 0
    # Run directory; None = runs/<recipe file name>.
    output: str | None = None
    # Stop after this many optimizer steps (None = all epochs); for smoke runs.
    max_steps: int | None = _opt(None, min=1)
    # Write a metrics.jsonl line (losses, lr, images/s) every N steps.
    log_every: int = _opt(50, min=1)
    # Checkpoint every N steps (0 = only at the end of each epoch and of the run).
    save_every: int = _opt(0, min=0)
    # How many of the newest checkpoints to keep (older ones are deleted).
    keep_checkpoints: int = _opt(3, min=1)
    # Also log to TensorBoard under the run directory (needs the tensorboard package).
    tensorboard: bool = False
    # Show a progress bar per epoch.
    progress: bool = True


@dataclass
class EvalSection:
    # Held-out identities (any open_dataset path), disjoint from data.path.
    holdout: str | None = None
    # Pairs per case (half genuine, half impostor).
    pairs: int = _opt(600, min=20)
    # Folds of the verification protocol (threshold chosen on the others, accuracy on each).
    folds: int = _opt(10, min=2)
    # Evaluate every N epochs (0 = only at the end of the run).
    every_epochs: int = _opt(0, min=0)
    # Faces per forward pass while embedding the held-out set.
    batch_size: int = _opt(128, min=1)
    # Seed of the held-out pairs and of their masks (the same pairs for every model compared).
    seed: int = 1234
    # Verification thresholds of a routed model: "one" for every pair (the paper compares by one
    # L2 threshold), or "per_extractor": E_F's pairs and E_P's pairs each get their own, since their
    # distances live in two embedding spaces (evaluation/verification.py). It rules this held-out
    # evaluation, the thresholds `bfm models build` writes into its pack and the BFM row of
    # benchmarks/real_faces.
    thresholds: str = _opt("one", choices=THRESHOLD_RULES)


@dataclass
class Recipe:
    # What to train: C + E_F + E_P ("bfm"), one ArcFace model on unmasked faces ("baseline1"), or one
    # ArcFace model on unmasked faces and their masked copies ("baseline2").
    mode: str = _opt("bfm", choices=MODES)
    # Train several modes in turn on this recipe and print the Table-II comparison on eval.holdout
    # (e.g. [baseline1, baseline2, bfm]: the quickstart); null = train `mode` only.
    compare: list[str] | None = None
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    init: InitSection = field(default_factory=InitSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    # Where it was read from, for messages and the default output dir (not a YAML key).
    source: str = field(default="<dict>", metadata={"internal": True})

    # -- conversions ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>", check_paths: bool = True) -> Recipe:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of sections, got {type(data).__name__}")
        recipe = _build(cls, data, "", source)
        recipe.source = source
        _check_recipe(recipe, data, source, check_paths)
        return recipe

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_mode(self, mode: str) -> Recipe:
        """The same recipe training a single ``mode`` (used by ``compare``)."""
        data = self.to_dict()
        data["mode"], data["compare"] = mode, None
        return Recipe.from_dict(data, self.source, check_paths=False)

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source.endswith((".yaml", ".yml")) else "run"

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output) if self.train.output else Path("runs") / self.name


def load_recipe(path, overrides: list[str] | tuple[str, ...] = (), check_paths: bool = True) -> Recipe:
    """Read, override (``key.path=value``, value parsed as YAML) and validate a recipe file.

    ``check_paths``: also require the dataset and init paths to exist (off to inspect a recipe
    written for another machine)."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise RecipeError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item, path)
    return Recipe.from_dict(data, source=path, check_paths=check_paths)


def apply_override(data: dict, item: str, source: str = "--set") -> None:
    """Set ``a.b.c=value`` in the nested dict ``data`` (the key is checked later with the rest)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"{source}: --set expects key.path=value, got {item!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{source}: --set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = parsed


# -- validation ------------------------------------------------------------------------------

def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _build(cls, data: dict, prefix: str, source: str):
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            elsewhere = [f"{section}.{key}" for section, tp in typing.get_type_hints(Recipe).items()
                         if dataclasses.is_dataclass(tp) and key in _fields(tp)]
            if close:
                hint = f" (did you mean '{close[0]}'?)"
            elif elsewhere:
                hint = f" (did you mean '{elsewhere[0]}'?)"
            else:
                hint = f" (valid: {', '.join(fields)})"
            raise RecipeError(f"{source}: unknown key '{path}'{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise RecipeError(f"{source}: '{path}' is a section (a mapping), got {_show(value)}")
            values[key] = _build(hint_type, value, f"{path}.", source)
        else:
            values[key] = _check_value(value, hint_type, fields[key].metadata, path, source)
    return cls(**values)


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    return str(tp)


def _check_value(value, tp, rules: dict, path: str, source: str):
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[...]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{source}: '{path}' must be {_type_name(tp)}, got {_show(value)}")
        (item_type,) = typing.get_args(tp)
        return [_check_value(v, item_type, {}, f"{path}[{i}]", source) for i, v in enumerate(value)]
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
    }[tp](value)
    if not ok:
        raise RecipeError(f"{source}: '{path}' must be {_type_name(tp)}, got {_show(value)}")
    if tp is float:
        value = float(value)
    if "choices" in rules and value not in rules["choices"]:
        raise RecipeError(f"{source}: '{path}' must be one of {', '.join(rules['choices'])}, got {value!r}")
    if "min" in rules and value < rules["min"]:
        raise RecipeError(f"{source}: '{path}' must be >= {rules['min']}, got {value!r}")
    if "max" in rules and value > rules["max"]:
        raise RecipeError(f"{source}: '{path}' must be <= {rules['max']}, got {value!r}")
    return value


def _check_recipe(r: Recipe, raw: dict, source: str, check_paths: bool) -> None:
    """Rules that span several keys, and inputs that must exist before training starts."""

    def fail(msg):
        raise RecipeError(f"{source}: {msg}")

    if r.compare is not None:
        if "mode" in raw:
            fail("give either 'mode' (train one model) or 'compare' (train several), not both")
        if not r.compare:
            fail("'compare' must list at least one of " + ", ".join(MODES))
        for i, mode in enumerate(r.compare):
            if mode not in MODES:
                fail(f"'compare[{i}]' must be one of {', '.join(MODES)}, got {mode!r}")
        if r.eval.holdout is None:
            fail("'compare' needs 'eval.holdout' (the held-out identities the table is measured on)")
    if r.data.path is None:
        fail("'data.path' is required (an image folder, a RecordIO dir or synthetic:N_IDS:IMGS_PER_ID)")
    if r.model.sample_rate < 1.0 and not r.model.partial_fc:
        fail("'model.sample_rate' below 1 needs 'model.partial_fc: true'")
    if r.optim.milestones != sorted(r.optim.milestones):
        fail(f"'optim.milestones' must be increasing, got {r.optim.milestones}")
    if r.data.mask_types is not None:
        from ..masks import ALL_TYPES, MASK_FAMILIES, OCCLUDER_FAMILY, check_types

        if not r.data.mask_types:
            fail("'data.mask_types' is empty: list at least one type or family, or null for every mask type")
        for i, kind in enumerate(r.data.mask_types):
            try:
                check_types([kind])
            except ValueError:
                fail(f"'data.mask_types[{i}]' must be one of {', '.join(ALL_TYPES)} or a family "
                     f"({', '.join([*MASK_FAMILIES, OCCLUDER_FAMILY])}), got {kind!r}")
    if r.init.trainable is not None and r.init.trainable_share is not None:
        fail("give either 'init.trainable' (name patterns) or 'init.trainable_share', not both")
    if r.init.freeze_full and r.init.full is None and r.mode == "bfm":
        fail("'init.freeze_full' needs 'init.full' (freezing a randomly initialised E_F is a mistake)")
    device = r.train.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        fail(f"'train.device' must be auto, cpu, cuda or cuda:N, got {device!r}")
    if check_paths:
        _check_dataset_path(r.data.path, "data.path", fail)
        if r.eval.holdout is not None:
            _check_dataset_path(r.eval.holdout, "eval.holdout", fail)
        for role in ("classifier", "full", "partial"):
            spec = getattr(r.init, role)
            if spec is not None and spec.startswith("mxnet:"):
                from ..export.from_mxnet import checkpoint_files

                try:
                    checkpoint_files(spec)
                except PackError as e:
                    fail(f"'init.{role}': {e}")
            elif spec is not None:
                path = spec[5:] if spec.startswith("onnx:") else spec
                if not Path(path).exists():
                    fail(f"'init.{role}': {path} does not exist")


def _check_dataset_path(spec: str, key: str, fail) -> None:
    if spec.startswith("synthetic:"):
        parts = spec.split(":")[1:]
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts) or int(parts[0]) < 2:
            fail(f"'{key}': {spec!r} must be synthetic:N_IDS:IMGS_PER_ID[:SEED] (integers, N_IDS >= 2)")
        return
    if not Path(spec).exists():
        fail(f"'{key}': dataset path {spec} does not exist")
