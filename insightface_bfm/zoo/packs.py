"""BFM packs: a model folder that both insightface 2.1 and insightface-bfm can load.

Layout of ``ROOT/models/NAME/`` (ROOT defaults to ``~/.insightface``, or
``$INSIGHTFACE_BFM_ROOT``)::

    mask_classifier.onnx   C   (logits [N,2]: unmasked, masked)
    full.onnx              E_F (embeddings [N,D])
    partial.onnx           E_P (embeddings [N,D])
    <detector>.onnx        optional SCRFD detector (its own file name, e.g. det_10g.onnx)
    MODEL.LICENSE          the terms of the weights
    manifest.json

``manifest.json`` is an insightface manifest V2 (``manifest_version: 2``, ``model_id``,
``license``, ``tasks``) declaring ``detection`` (the detector) and ``recognition`` (E_F) with
their sha256, so plain ``insightface.app.FaceAnalysis(name=NAME)`` runs detection + E_F on it
and ignores the rest. insightface ignores unknown top-level keys; ours is ``bfm``::

    "bfm": {
      "format": 1,                      # layout version of this section
      "version": "1",                   # the pack's own version (user-chosen)
      "created_with": "insightface-bfm 0.1.0",
      "embedding_size": 512,
      "classifier": "mask_classifier.onnx", "full": "full.onnx", "partial": "partial.onnx",
      "detector": "det_10g.onnx" | null,
      "thresholds": {"mask_score": 0.5, "verification_distance": 1.24 | null,
                     "verification_distance_partial": 1.30 | null,  # optional key
                     # optional: open-set (1:N) search thresholds, evaluation/open_set.py
                     "search_distance": 0.9, "search_distance_partial": 1.0, "search_fpir": 0.01,
                     "search_gallery_size": 1000,
                     "search_calibration": {..., "curve": [[fmr, distance E_F, distance E_P], ...]}},
      "files": {"<file>": "<sha256>", ...},  # every file of the pack except manifest.json
      "build": {...}                    # optional: how `bfm models build` made it (zoo/build.py)
    }

``verification_distance`` is a squared L2 distance between L2-normalised embeddings (range
[0, 4]; equal to 2 - 2 * cosine similarity), the measure insightface's verification uses.
It judges E_F's pairs, and E_P's too unless ``verification_distance_partial`` gives E_P its own
(a pack built with ``eval.thresholds: per_extractor``; absent or null: one threshold for both).

``search_distance`` (E_F's meetings) and ``search_distance_partial`` (E_P's) are the 1:N
thresholds of ``Gallery.search``/``identify``: chosen for galleries of ``search_gallery_size``
entries at the false-positive identification rate ``search_fpir``, on identities never trained on
(``bfm models build`` at its end, or ``bfm models calibrate`` on a built pack);
``search_calibration.curve`` keeps the pair at other per-meeting false match rates, from which
``FaceAnalysis.search_thresholds`` sets them for any gallery size and FPIR.

``load_pack`` verifies the sha256 of every listed file before returning, and
``Pack.read_verified`` re-verifies the bytes it hands to ONNX Runtime, so a session is only
ever built from bytes that match the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text, make_temp_dir
from ..errors import ChecksumError, PackError
from .download import checked_sha256, sha256_file

MANIFEST = "manifest.json"
LICENSE_FILE = "MODEL.LICENSE"
PACK_FORMAT = 1
ROOT_ENV = "INSIGHTFACE_BFM_ROOT"
DEFAULT_ROOT = "~/.insightface"
ROLE_FILES = {"classifier": "mask_classifier.onnx", "full": "full.onnx", "partial": "partial.onnx"}
# Role names written by insightface_bfm.export into each graph's metadata.
EXPORT_ROLES = {"classifier": "mask_classifier", "full": "full", "partial": "partial"}
DETECTION_PREPROCESSING = {"mean": 127.5, "std": 128.0}
RECOGNITION_PREPROCESSING = {"mean": 127.5, "std": 127.5}
DEFAULT_LICENSE = (
    "Terms of the model weights in this pack\n"
    "=======================================\n\n"
    "The networks were trained with insightface-bfm. Their terms follow from the data they were\n"
    "trained on and from the models they were initialised from; the person who built this pack\n"
    "did not state them (`bfm pack --license FILE` does).\n\n"
    "A detector copied from an insightface model-zoo pack (buffalo_*, antelopev2) is available\n"
    "for non-commercial research purposes only (insightface model-zoo terms).\n"
)
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def resolve_root(root=None) -> Path:
    """The insightface-style root: ``root``, else ``$INSIGHTFACE_BFM_ROOT``, else ``~/.insightface``."""
    value = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(os.path.expanduser(str(value)))


def resolve_pack_dir(name, root=None) -> Path:
    """A pack given as a directory path, or as a name under ``ROOT/models``."""
    direct = Path(os.path.expanduser(str(name)))
    if direct.is_dir():
        return direct.resolve()
    if not _MODEL_ID.fullmatch(str(name)):  # a path, not a pack name: nothing to build or download
        raise PackError(f"pack {name!r}: no such pack folder (give a pack folder, or the name of a pack "
                        f"installed under {resolve_root(root) / 'models'})")
    candidate = resolve_root(root) / "models" / str(name)
    if candidate.is_dir():
        return candidate.resolve()
    raise PackError(
        f"pack {name!r}: no directory {direct} nor {candidate}; {how_to_get(name, root)}"
    )


def how_to_get(name, root=None) -> str:
    """The two ways to a missing pack, for one-line errors."""
    return (f"build it with `bfm models build {name} --faces DIR --base MODEL --detector DET "
            f"--root {resolve_root(root)}` or download it with `bfm models download {name} --registry "
            "URL_OR_FILE` (no public BFM pack is hosted yet)")


def _safe_name(value, where: str) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value:
        raise PackError(f"{where}: {value!r} is not a plain file name inside the pack")
    return value


@dataclass(frozen=True)
class PackThresholds:
    mask_score: float = 0.5
    # squared L2 between normalised embeddings; None when the pack builder gave none
    verification_distance: float | None = None
    # E_P's own threshold; None: E_P's pairs are judged by verification_distance too
    verification_distance_partial: float | None = None

    @property
    def verification_similarity(self) -> float | None:
        """The same threshold as a cosine similarity (distance = 2 - 2 * similarity)."""
        if self.verification_distance is None:
            return None
        return 1.0 - self.verification_distance / 2.0

    # open-set (1:N) search thresholds (squared L2) for galleries of search_gallery_size at search_fpir;
    # None: not calibrated
    search_distance: float | None = None
    search_distance_partial: float | None = None
    search_fpir: float | None = None
    search_gallery_size: int | None = None
    # ((fmr, distance E_F, distance E_P), ...): the pair at other per-meeting false match rates
    search_curve: tuple | None = field(default=None, compare=False)

    def distance_for(self, extractor: str) -> float | None:
        """The squared L2 threshold for pairs compared by ``extractor`` ('full' or 'partial')."""
        if extractor == "partial" and self.verification_distance_partial is not None:
            return self.verification_distance_partial
        return self.verification_distance

    def search_distance_for(self, extractor: str) -> float | None:
        """The pack's 1:N threshold (squared L2) for meetings through ``extractor``; None: none stored."""
        if extractor == "partial" and self.search_distance_partial is not None:
            return self.search_distance_partial
        return self.search_distance

    def search_distances_at(self, fpir: float | None = None, gallery_size: int | None = None,
                            clamped: list | None = None) -> dict[str, float]:
        """The 1:N thresholds at ``fpir`` for a gallery of ``gallery_size`` (defaults: the stored
        ones), read off the calibration curve (``evaluation.open_set.distances_from_curve``). Where the
        calibration did not measure so rare a false match, the strictest measured pair is returned and
        ``clamped`` (a list) gets True appended."""
        from ..evaluation.open_set import distances_from_curve

        if not self.search_curve:
            raise PackError("the pack has no open-set calibration to set thresholds for another FPIR or "
                            "gallery size from; run `bfm models calibrate PACK --faces DIR`")
        fpir = self.search_fpir if fpir is None else float(fpir)
        size = self.search_gallery_size if gallery_size is None else int(gallery_size)
        if not 0.0 < fpir < 1.0:
            raise PackError(f"FPIR {fpir}: must be in (0, 1), e.g. 0.01")
        if size < 1:
            raise PackError(f"gallery size {size}: must be >= 1")
        distances, was_clamped = distances_from_curve(self.search_curve, fpir, size)
        if clamped is not None:
            clamped.append(was_clamped)
        return distances


@dataclass(frozen=True)
class Pack:
    """A verified BFM pack. Paths are absolute; ``files`` maps file name -> sha256."""

    name: str
    path: Path
    version: str
    embedding_size: int
    classifier: Path
    full: Path
    partial: Path
    detector: Path | None
    thresholds: PackThresholds
    files: dict = field(repr=False)
    manifest: dict = field(repr=False)

    def read_verified(self, path) -> bytes:
        """The bytes of one pack file, checked against the manifest at the moment of reading."""
        path = Path(path)
        expected = self.files.get(path.name)
        if expected is None:
            raise PackError(f"{path}: not listed in {self.path / MANIFEST}")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PackError(f"{path}: missing or unreadable ({e.strerror or e})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ChecksumError(
                f"{path}: sha256 {actual} differs from {expected} in the manifest (file altered)"
            )
        return data


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"{path}: missing; {directory} is not a model pack") from None
    except (OSError, UnicodeError, json.JSONDecodeError) as e:
        raise PackError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(raw, dict):
        raise PackError(f"{path}: the manifest must be a JSON object")
    return raw


def _check_insightface_manifest(directory: Path) -> None:
    """Parse the manifest with insightface's own V2 parser (what plain FaceAnalysis will do)."""
    from insightface.model_zoo.package_manifest import load_model_package

    try:
        load_model_package(directory)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise PackError(f"{directory / MANIFEST}: insightface rejects it as a manifest V2 ({e})") from None


def load_pack(name_or_path, root=None) -> Pack:
    """Open a pack (directory or name under ROOT/models) and verify every file's sha256.

    Raises ``PackError`` (``ChecksumError`` for altered files) naming the file; no model
    session is created here.
    """
    directory = resolve_pack_dir(name_or_path, root)
    raw = _read_manifest(directory)
    where = str(directory / MANIFEST)
    bfm = raw.get("bfm")
    if not isinstance(bfm, dict):
        raise PackError(
            f"{where}: no 'bfm' section, so {directory.name} is a plain insightface pack; "
            "use it as a detector source (det_pack=...) instead"
        )
    if bfm.get("format") != PACK_FORMAT:
        raise PackError(
            f"{where}: bfm.format {bfm.get('format')!r} is not supported (expected {PACK_FORMAT})"
        )
    files = bfm.get("files")
    if not isinstance(files, dict) or not files:
        raise PackError(f"{where}: bfm.files must map every pack file to its sha256")
    for fname, digest in files.items():
        _safe_name(fname, f"{where}: bfm.files")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise PackError(f"{where}: bfm.files[{fname!r}] is not a lowercase hex sha256")
    roles = {}
    for role in ("classifier", "full", "partial"):
        roles[role] = _safe_name(bfm.get(role), f"{where}: bfm.{role}")
    detector = bfm.get("detector")
    if detector is not None:
        roles["detector"] = _safe_name(detector, f"{where}: bfm.detector")
    for role, fname in roles.items():
        if fname not in files:
            raise PackError(f"{where}: bfm.{role} file {fname!r} has no sha256 in bfm.files")
    tasks = raw.get("tasks") or {}
    rec = tasks.get("recognition") or {}
    if rec.get("file") != roles["full"]:
        raise PackError(
            f"{where}: tasks.recognition.file must be E_F ({roles['full']}), got {rec.get('file')!r}"
        )
    if detector is not None and (tasks.get("detection") or {}).get("file") != detector:
        raise PackError(f"{where}: tasks.detection.file must be the detector {detector!r}")
    thresholds_raw = bfm.get("thresholds") or {}

    def optional(key):
        return None if thresholds_raw.get(key) is None else float(thresholds_raw[key])

    try:
        thresholds = PackThresholds(
            mask_score=float(thresholds_raw.get("mask_score", 0.5)),
            verification_distance=optional("verification_distance"),
            verification_distance_partial=optional("verification_distance_partial"),
            search_distance=optional("search_distance"),
            search_distance_partial=optional("search_distance_partial"),
            search_fpir=optional("search_fpir"),
            search_gallery_size=None if thresholds_raw.get("search_gallery_size") is None
            else int(thresholds_raw["search_gallery_size"]),
            search_curve=_search_curve(thresholds_raw.get("search_calibration")),
        )
    except (TypeError, ValueError):
        raise PackError(f"{where}: bfm.thresholds must hold numbers") from None
    if not 0.0 < thresholds.mask_score < 1.0:
        raise PackError(f"{where}: bfm.thresholds.mask_score must be in (0, 1)")
    for key in ("verification_distance", "verification_distance_partial", "search_distance",
                "search_distance_partial"):
        d = getattr(thresholds, key)
        if d is not None and not 0.0 <= d <= 4.0:
            raise PackError(f"{where}: bfm.thresholds.{key} must be in [0, 4] (squared L2)")
    if thresholds.verification_distance_partial is not None and thresholds.verification_distance is None:
        raise PackError(f"{where}: bfm.thresholds.verification_distance_partial needs verification_distance "
                        "(E_F's threshold) too")
    if thresholds.search_distance_partial is not None and thresholds.search_distance is None:
        raise PackError(f"{where}: bfm.thresholds.search_distance_partial needs search_distance too")
    # insightface's own parser: the pack must stay a valid manifest-V2 package for plain insightface.
    _check_insightface_manifest(directory)
    # Every file, before anything is loaded: missing or altered -> error naming it.
    for fname, expected in files.items():
        path = directory / fname
        if not path.is_file():
            raise PackError(
                f"{path}: missing from the pack (listed in {MANIFEST} with sha256 {expected[:12]}...)"
            )
        actual = checked_sha256(path)
        if actual != expected:
            raise ChecksumError(
                f"{path}: sha256 {actual} differs from {expected} in {MANIFEST} (file altered)"
            )
    try:
        embedding_size = int(bfm.get("embedding_size"))
    except (TypeError, ValueError):
        raise PackError(f"{where}: bfm.embedding_size must be an integer") from None
    return Pack(
        name=str(raw.get("model_id", directory.name)),
        path=directory,
        version=str(bfm.get("version", "")),
        embedding_size=embedding_size,
        classifier=directory / roles["classifier"],
        full=directory / roles["full"],
        partial=directory / roles["partial"],
        detector=directory / roles["detector"] if "detector" in roles else None,
        thresholds=thresholds,
        files=dict(files),
        manifest=raw,
    )


def _search_curve(calibration) -> tuple | None:
    if not isinstance(calibration, dict) or not isinstance(calibration.get("curve"), list):
        return None
    return tuple((float(f), float(a), float(b)) for f, a, b in calibration["curve"])


def search_threshold_keys(search: dict | None) -> dict:
    """The manifest's ``search_*`` threshold keys from a calibration (``open_set.calibrate_pack``)."""
    if not search:
        return {}
    for key in ("distance", "distance_partial"):
        d = search.get(key)
        if d is None or not 0.0 <= float(d) <= 4.0:
            raise PackError(f"open-set threshold {key} {d!r}: must be in [0, 4] (squared L2)")
    return {"search_distance": float(search["distance"]),
            "search_distance_partial": float(search["distance_partial"]),
            "search_fpir": float(search["fpir"]), "search_gallery_size": int(search["gallery_size"]),
            "search_calibration": search.get("calibration") or {}}


def set_search_thresholds(pack, search: dict, root=None) -> Pack:
    """Store open-set thresholds in an existing pack's manifest (atomically; nothing else changes:
    the weights and their checksums stay as they are), then load it back."""
    directory = load_pack(pack, root).path
    raw = _read_manifest(directory)
    thresholds = raw["bfm"].setdefault("thresholds", {})
    for key in [k for k in thresholds if k.startswith("search_")]:
        del thresholds[key]
    thresholds.update(search_threshold_keys(search))
    atomic_write_text(directory / MANIFEST, json.dumps(raw, indent=2) + "\n")
    return load_pack(directory)


def find_detector(det_pack, root=None) -> Path:
    """The SCRFD detector ONNX of an insightface pack (name under ROOT/models, directory, or .onnx file).

    A manifest-V2 pack names it (tasks.detection.file); a legacy pack (buffalo_l, antelopev2)
    is searched for the graph with >= 5 outputs, insightface's own detector rule.
    """
    text = os.path.expanduser(str(det_pack))
    if text.endswith(".onnx"):
        if not os.path.isfile(text):
            raise PackError(f"detector {text}: no such file")
        return Path(text).resolve()
    try:
        directory = resolve_pack_dir(det_pack, root)
    except PackError:
        raise PackError(
            f"detector pack {det_pack!r} is not installed under {resolve_root(root) / 'models'}; "
            f"run `bfm models download {det_pack}` or unpack it there by hand"
        ) from None
    manifest = directory / MANIFEST
    if manifest.is_file():
        raw = _read_manifest(directory)
        det = ((raw.get("tasks") or {}).get("detection") or {}).get("file")
        if raw.get("manifest_version") == 2 and det:
            path = (directory / det).resolve()
            if not path.is_file():
                raise PackError(f"{path}: detector named in {manifest} is missing")
            return path
    import onnx

    for path in sorted(directory.glob("*.onnx")):
        try:
            graph = onnx.load_model(str(path), load_external_data=False).graph
        except Exception:
            continue
        if len(graph.output) >= 5:
            return path.resolve()
    raise PackError(f"detector pack {directory}: no SCRFD-style detector ONNX (>= 5 outputs) in it")


def find_recognizer(pack, root=None) -> Path:
    """The recognition ONNX of an installed insightface pack (name under ROOT/models or directory):
    the manifest-V2 ``tasks.recognition.file`` (E_F of a BFM pack), else the one file of a legacy
    pack (buffalo_l's w600k_r50.onnx) that insightface's router loads as a recognition model."""
    try:
        directory = resolve_pack_dir(pack, root)
    except PackError:
        raise PackError(
            f"{pack!r}: neither an ONNX/.pth file nor a pack installed under "
            f"{resolve_root(root) / 'models'}; "
            f"run `bfm models download {pack}` or give the recogniser's file"
        ) from None
    if (directory / MANIFEST).is_file():
        raw = _read_manifest(directory)
        rec = ((raw.get("tasks") or {}).get("recognition") or {}).get("file")
        if raw.get("manifest_version") == 2 and rec:
            path = (directory / _safe_name(rec, f"{directory / MANIFEST}: tasks.recognition.file")).resolve()
            if not path.is_file():
                raise PackError(f"{path}: recognition model named in {directory / MANIFEST} is missing")
            return path
    from insightface.model_zoo import get_model

    for path in sorted(directory.glob("*.onnx")):
        try:
            model = get_model(str(path))
        except Exception:
            continue
        if getattr(model, "taskname", None) == "recognition":
            return path.resolve()
    raise PackError(f"pack {directory}: no ONNX file that insightface loads as a recognition model")


def _inspect_export(path: Path, role: str):
    """Input/output shapes and role metadata of one exported ONNX; raises PackError when unusable."""
    import onnx

    if not path.is_file():
        raise PackError(f"{path}: missing from the export directory (expected {ROLE_FILES[role]})")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:
        raise PackError(f"{path}: not a readable ONNX model ({e})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    declared = meta.get("role")
    if declared is not None and declared != EXPORT_ROLES[role]:
        raise PackError(f"{path}: its metadata says role {declared!r}, expected {EXPORT_ROLES[role]!r}")
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise PackError(f"{path}: expected one input and one output")

    def dims(value):
        return [
            d.dim_value if d.dim_value > 0 else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim
        ]

    in_shape, out_shape = dims(inputs[0]), dims(graph.output[0])
    if len(in_shape) != 4 or in_shape[1:] != [3, 112, 112]:
        raise PackError(f"{path}: expected input [batch, 3, 112, 112], got {in_shape}")
    if len(out_shape) != 2 or not isinstance(out_shape[1], int):
        raise PackError(f"{path}: expected output [batch, K] with a fixed K, got {out_shape}")
    return out_shape[1], meta


def build_pack(
    export_dir,
    out,
    *,
    detector=None,
    det_pack=None,
    name: str | None = None,
    root=None,
    mask_threshold: float = 0.5,
    verification_distance: float | None = None,
    verification_distance_partial: float | None = None,
    version: str = "1",
    license_file=None,
    overwrite: bool = False,
    build_info: dict | None = None,
    search: dict | None = None,
) -> Pack:
    """Build a pack in directory ``out`` from an export (mask_classifier/full/partial.onnx).

    The detector is an ONNX path (``detector``) or taken from an installed insightface pack
    (``det_pack``, e.g. "buffalo_l"); it is copied in so that the pack is self-contained and
    plain insightface can run it. The pack is assembled in a temporary folder beside ``out``
    and renamed into place, then loaded back with ``load_pack`` (checksums) and insightface's
    manifest parser. ``build_info`` (``bfm models build``: held-out table, base model, recipe) is
    stored as the manifest's ``bfm.build``; ``search`` (``open_set.calibrate_pack``) as the open-set
    thresholds ``bfm.thresholds.search_*``.
    """
    from .. import __version__

    export_dir = Path(os.path.expanduser(str(export_dir)))
    out = Path(os.path.expanduser(str(out))).absolute()
    if not export_dir.is_dir():
        raise PackError(f"{export_dir}: export directory not found")
    if detector is not None and det_pack is not None:
        raise PackError("give either a detector ONNX or a detector pack, not both")
    name = name or out.name
    if not _MODEL_ID.fullmatch(name):
        raise PackError(
            f"pack name {name!r}: use letters, digits, '.', '_' or '-' (insightface model_id rule)"
        )
    if not 0.0 < mask_threshold < 1.0:
        raise PackError(f"mask threshold {mask_threshold}: must be in (0, 1)")
    for label, d in (("verification distance", verification_distance),
                     ("E_P's verification distance", verification_distance_partial)):
        if d is not None and not 0.0 <= d <= 4.0:
            raise PackError(f"{label} {d}: must be in [0, 4] (squared L2)")
    if verification_distance_partial is not None and verification_distance is None:
        raise PackError("E_P's verification distance needs E_F's (verification_distance) too")
    if out.exists() and not overwrite:
        raise PackError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")

    sources = {role: export_dir / fname for role, fname in ROLE_FILES.items()}
    widths = {role: _inspect_export(path, role)[0] for role, path in sources.items()}
    if widths["classifier"] != 2:
        raise PackError(
            f"{sources['classifier']}: a mask classifier outputs 2 logits, got {widths['classifier']}"
        )
    if widths["full"] != widths["partial"]:
        raise PackError(
            f"{export_dir}: E_F and E_P embed to different sizes ({widths['full']} vs {widths['partial']}); "
            "the pair rule compares them within one extractor but a gallery stores both at one size"
        )
    det_source = None
    if detector is not None:
        det_source = Path(os.path.expanduser(str(detector)))
        if not det_source.is_file():
            raise PackError(f"detector {det_source}: no such file")
    elif det_pack is not None:
        det_source = find_detector(det_pack, root)
    det_name = None
    if det_source is not None:
        det_name = det_source.name if det_source.name not in set(ROLE_FILES.values()) else "detector.onnx"
        import onnx

        try:
            n_out = len(onnx.load_model(str(det_source), load_external_data=False).graph.output)
        except Exception as e:
            raise PackError(f"detector {det_source}: not a readable ONNX model ({e})") from None
        if n_out < 5:
            raise PackError(
                f"detector {det_source}: {n_out} outputs; insightface's SCRFD detectors have >= 5"
            )
    if license_file is not None and not Path(license_file).is_file():
        raise PackError(f"licence file {license_file}: no such file")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    try:
        for role, src in sources.items():
            shutil.copyfile(src, tmp / ROLE_FILES[role])
        if det_source is not None:
            shutil.copyfile(det_source, tmp / det_name)
        license_text = Path(license_file).read_text(encoding="utf-8") if license_file else DEFAULT_LICENSE
        (tmp / LICENSE_FILE).write_text(license_text, encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        tasks = {
            "recognition": {
                "file": ROLE_FILES["full"],
                "sha256": files[ROLE_FILES["full"]],
                "preprocessing": RECOGNITION_PREPROCESSING,
                "input_size": [112, 112],
                "embedding_dimension": int(widths["full"]),
            }
        }
        if det_name is not None:
            tasks["detection"] = {
                "file": det_name,
                "sha256": files[det_name],
                "preprocessing": DETECTION_PREPROCESSING,
            }
        manifest = {
            "manifest_version": 2,
            "model_id": name,
            "display_name": f"{name} (insightface-bfm: masked-face recognition by Balanced Feature Matching)",
            "license": LICENSE_FILE,
            "tasks": tasks,
            "bfm": {
                "format": PACK_FORMAT,
                "version": str(version),
                "created_with": f"insightface-bfm {__version__}",
                "embedding_size": int(widths["full"]),
                "classifier": ROLE_FILES["classifier"],
                "full": ROLE_FILES["full"],
                "partial": ROLE_FILES["partial"],
                "detector": det_name,
                "thresholds": {
                    "mask_score": float(mask_threshold),
                    "verification_distance": verification_distance,
                    **({} if verification_distance_partial is None
                       else {"verification_distance_partial": verification_distance_partial}),
                    **search_threshold_keys(search),
                },
                "files": files,
            },
        }
        if build_info is not None:
            manifest["bfm"]["build"] = build_info
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        load_pack(tmp)  # the exact checks users will run, before the pack becomes visible
        backup = None
        if out.exists():
            backup = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, backup)
        os.replace(tmp, out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_pack(out)
