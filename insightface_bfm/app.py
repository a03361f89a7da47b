"""``FaceAnalysis``: insightface's face analysis with Balanced Feature Matching routing.

    image -> detector -> 5 keypoints -> norm_crop 112x112 -> C: masked? -> E_F or E_P

``get`` returns insightface ``Face`` objects with extra keys:

- ``masked`` (bool), ``mask_score`` (P(masked) from C), ``extractor`` ("full" | "partial");
- ``embedding``: from the routed extractor (so ``normed_embedding`` works as in insightface);
- ``embedding_full`` / ``embedding_partial``: the routed one always, both with ``embed="both"``;
- ``aligned_crop``: the 112x112 BGR crop, kept so that ``compare`` can embed a face with the
  other extractor when the pair rule needs it (a masked face met by an unmasked one).

Why not ``super().__init__``: insightface's constructor builds ONNX Runtime sessions straight
from the files (in a legacy folder, one per ONNX file, even the ones it then drops). A BFM
pack is checksum-verified first (``load_pack``) and every session is built from bytes checked
at the moment of reading, so a missing or altered file fails before anything is loaded. This
class then sets the attributes insightface's own ``prepare`` and ``draw_on`` use (``models``,
``det_model``, ``addons``), so those are inherited unchanged. insightface addons (liveness)
are not supported here.
"""

from __future__ import annotations

import numpy as np
from insightface.app import FaceAnalysis as _InsightFaceAnalysis
from insightface.app.common import Face

from .errors import BFMError, ImageError, PackError
from .imaging import check_image, norm_crop
from .matching import Comparison, compare
from .runtime import ALIGNED_SIZE, EmbedderONNX, MaskClassifierONNX, choose_providers, create_session
from .zoo.packs import find_detector, load_pack, resolve_pack_dir
from .zoo.registration import register

__all__ = ["FaceAnalysis", "SearchThresholdWarning"]

EMBED_MODES = ("routed", "both")

register()


def _verified_resolution_factory(pack, path):
    """SCRFD builds one static-shape session per detection size from its file, lazily; re-verify
    the file's sha256 right before each such build."""
    from insightface.model_zoo import scrfd

    default = getattr(scrfd, "_default_resolution_session_factory", None)
    if default is None:
        return None

    def factory(model_file, input_size, reference_session):
        pack.read_verified(path)
        return default(model_file, input_size, reference_session)

    return factory


class FaceAnalysis(_InsightFaceAnalysis):
    """Detection + mask classification + routed embedding, from a verified BFM pack.

    Args:
        name: a pack name under ``ROOT/models`` or a pack directory.
        root: the insightface root (default ``$INSIGHTFACE_BFM_ROOT`` or ``~/.insightface``).
        providers: ONNX Runtime providers; None = CUDA when it works, else CPU.
        det_pack: take the detector from another insightface pack instead (a name under
            ``ROOT/models`` such as "buffalo_l", a directory, or a detector ``.onnx``).
        mask_threshold: P(masked) at or above which a face counts as masked (default: the pack's).
        download: a pack name that is not installed but is in a registry is downloaded into
            ``ROOT/models`` first (resumable, sha256-checked); False refuses.
        registry: registries searched before the built-in one (file, folder or http(s) URL, or a
            list of them; default ``$INSIGHTFACE_BFM_REGISTRY``).
    """

    def __init__(
        self,
        name="bfm",
        root=None,
        providers=None,
        det_pack=None,
        *,
        mask_threshold: float | None = None,
        sess_options=None,
        static_shape_sessions: bool = True,
        download: bool = True,
        registry=None,
    ):
        from .zoo.registry import ensure_pack

        pack = load_pack(ensure_pack(name, root, registry=registry, download=download), root)
        # every checksum verified above, before any session exists
        providers = choose_providers(providers)
        threshold = pack.thresholds.mask_score if mask_threshold is None else float(mask_threshold)

        def session(path):
            return create_session(pack.read_verified(path), providers, sess_options, name=str(path))

        classifier = MaskClassifierONNX(
            model_file=str(pack.classifier), session=session(pack.classifier), threshold=threshold
        )
        full = EmbedderONNX(model_file=str(pack.full), session=session(pack.full), face_key="embedding")
        partial = EmbedderONNX(
            model_file=str(pack.partial), session=session(pack.partial), face_key="embedding_partial"
        )
        for net in (full, partial):
            if net.embedding_size != pack.embedding_size:
                raise PackError(
                    f"{net.model_file}: embeds to {net.embedding_size}, "
                    f"the manifest says {pack.embedding_size}"
                )
        detector = self._load_detector(pack, det_pack, root, providers, sess_options, static_shape_sessions)

        self.pack = pack
        self.model_dir = str(pack.path)
        self.model_package = None
        self.addons = {}
        self.liveness_mode = "normal"
        self.liveness_threshold = None
        self.det_model = detector
        self.classifier = classifier
        self.full = full
        self.partial = partial
        # insightface's prepare() walks this dict: detection gets det_size/det_thresh, the rest ctx_id.
        self.models = {
            "detection": detector,
            "mask_classifier": classifier,
            "recognition": full,
            "recognition_partial": partial,
        }

    @staticmethod
    def _load_detector(pack, det_pack, root, providers, sess_options, static_shape_sessions):
        from insightface.model_zoo import model_zoo
        from insightface.model_zoo.scrfd import SCRFD

        if det_pack is None:
            if pack.detector is None:
                raise PackError(
                    f"{pack.path}: the pack has no detector; pass det_pack='buffalo_l' (or another "
                    "insightface pack, a directory or a detector .onnx)"
                )
            sess = create_session(
                pack.read_verified(pack.detector), providers, sess_options, str(pack.detector)
            )
            detector = SCRFD(
                model_file=str(pack.detector),
                session=sess,
                resolution_session_factory=_verified_resolution_factory(pack, pack.detector),
                static_shape_sessions=static_shape_sessions,
            )
        else:
            from insightface.model_zoo.package_manifest import has_model_package_manifest

            kwargs = {"providers": providers, "static_shape_sessions": static_shape_sessions}
            if sess_options is not None:
                kwargs["sess_options"] = sess_options
            text = str(det_pack)
            directory = None if text.endswith(".onnx") else resolve_pack_dir_or_none(det_pack, root)
            try:
                if directory is not None and has_model_package_manifest(directory):
                    # insightface verifies the task's declared sha256 itself here.
                    detector = model_zoo.get_model(str(directory), model_task="detection", **kwargs)
                else:
                    detector = model_zoo.get_model(str(find_detector(det_pack, root)), **kwargs)
            except (ValueError, RuntimeError, FileNotFoundError, AssertionError) as e:
                raise PackError(f"detector pack {det_pack!r}: {e}") from None
        if detector is None or getattr(detector, "taskname", None) != "detection":
            raise PackError(
                f"detector {det_pack or pack.detector}: insightface does not route it as a detector"
            )
        if not getattr(detector, "use_kps", False):
            raise PackError(
                f"detector {det_pack or pack.detector}: gives no 5-point keypoints, which alignment needs"
            )
        return detector

    # -- analysis -------------------------------------------------------------------------

    def get(self, img, max_num=0, det_metric="default", embed="routed"):
        """Detect, align, classify and embed every face of a BGR image (see module doc)."""
        check_image(img, "image")
        _check_embed(embed)
        bboxes, kpss = self.det_model.detect(img, max_num=max_num, metric=det_metric)
        if bboxes.shape[0] == 0:
            return []
        crops = np.stack(
            [
                norm_crop(img, kpss[i], ALIGNED_SIZE)
                for i in range(bboxes.shape[0])
            ]
        )
        faces = [
            Face(bbox=bboxes[i, 0:4], kps=kpss[i], det_score=bboxes[i, 4]) for i in range(bboxes.shape[0])
        ]
        self._analyse(faces, crops, embed)
        return faces

    def get_aligned(self, crops, embed="routed"):
        """The same analysis for already aligned 112x112 BGR crops (a list or an Nx112x112x3 array).

        Batched: one classifier run over all crops, then one run of each extractor over its subset.
        """
        _check_embed(embed)
        if isinstance(crops, np.ndarray) and crops.ndim == 3:
            crops = crops[None]
        if crops is None:
            raise ImageError("crops: got None instead of aligned face crops")
        items = list(crops)
        for i, crop in enumerate(items):
            check_image(crop, f"crops[{i}]", size=ALIGNED_SIZE)
        if not items:
            return []
        batch = np.stack(items)
        faces = [Face(bbox=None, kps=None, det_score=None) for _ in items]
        self._analyse(faces, batch, embed)
        return faces

    def _analyse(self, faces, crops, embed):
        scores = self.classifier.scores(crops)
        masked = scores >= self.classifier.threshold
        every = np.arange(len(faces))
        full_idx = every if embed == "both" else np.flatnonzero(~masked)
        partial_idx = every if embed == "both" else np.flatnonzero(masked)
        # Compute everything first, then write to the faces: an error leaves no half-filled Face.
        full = self.full.get_feat(crops[full_idx]) if full_idx.size else None
        partial = self.partial.get_feat(crops[partial_idx]) if partial_idx.size else None
        full_of = {int(i): full[j] for j, i in enumerate(full_idx)}
        partial_of = {int(i): partial[j] for j, i in enumerate(partial_idx)}
        for i, face in enumerate(faces):
            face.masked = bool(masked[i])
            face.mask_score = float(scores[i])
            face.extractor = "partial" if masked[i] else "full"
            face.aligned_crop = crops[i]
            if i in full_of:
                face.embedding_full = full_of[i]
            if i in partial_of:
                face.embedding_partial = partial_of[i]
            face.embedding = partial_of[i] if masked[i] else full_of[i]

    def embed_missing(self, face, extractor: str):
        """Embed ``face``'s stored aligned crop with ``extractor`` and keep the result on the face."""
        crop = face.get("aligned_crop")
        if crop is None:
            return None
        net = self.full if extractor == "full" else self.partial
        emb = net.get_feat(crop[None])[0]
        face[f"embedding_{extractor}"] = emb
        return emb

    def complete(self, faces):
        """Fill both ``embedding_full`` and ``embedding_partial`` (e.g. before ``Gallery.enrol``)."""
        single = isinstance(faces, dict)
        for face in [faces] if single else faces:
            for extractor in ("full", "partial"):
                if face.get(f"embedding_{extractor}") is None and self.embed_missing(face, extractor) is None:
                    raise BFMError(f"face has no aligned_crop to compute its {extractor} embedding from")
        return faces

    # -- drawing --------------------------------------------------------------------------

    def draw_on(self, img, faces, names=None):
        """insightface's picture (boxes, keypoints) with each face's masked state and score on it.

        Boxes take the colour of the route (orange: masked, E_P; green: unmasked, E_F);
        ``names`` (one per face, e.g. gallery answers) go above the mask label. See ``drawing``.
        """
        from .drawing import draw_faces

        check_image(img, "image")
        detected = [f for f in faces if f.get("bbox") is not None]
        base = super().draw_on(img, detected) if detected else img
        return draw_faces(base, faces, names)

    # -- matching -------------------------------------------------------------------------

    def compare(self, face_a, face_b, threshold: float | dict | None = None) -> Comparison:
        """Compare two analysed faces by the pair rule (either masked: E_P for both, else E_F).

        Returns ``Comparison(similarity, distance, case, extractor, threshold, same)``:
        cosine similarity, squared L2 distance of normalised embeddings (2 - 2 * similarity),
        case 1 both unmasked / 2 one masked / 3 both masked. A missing embedding is computed
        from the face's stored aligned crop. ``threshold``: a squared L2 distance, or one per
        extractor (``verification_thresholds()``), to fill ``same``; by default the pack's own
        (as ``verify``), and ``same`` stays None only for a pack without one.
        """
        if threshold is None and self.pack.thresholds.verification_distance is not None:
            threshold = self.verification_thresholds()
        return compare(face_a, face_b, embed_missing=self.embed_missing, threshold=threshold)

    def verification_thresholds(self, threshold: float | None = None) -> dict[str, float]:
        """The squared L2 threshold per extractor: ``threshold`` for both if given, else the pack's
        (``verification_distance``, and ``verification_distance_partial`` for E_P where the pack
        has one), else an error."""
        if threshold is not None:
            check_distance(threshold, "threshold")
            return {"full": float(threshold), "partial": float(threshold)}
        if self.pack.thresholds.verification_distance is None:
            raise PackError(
                f"{self.pack.path}: the pack has no verification threshold; pass one (threshold=, "
                "--threshold X: squared L2, 0..4) or rebuild it with `bfm pack ... --distance-threshold X`"
            )
        return {e: float(self.pack.thresholds.distance_for(e)) for e in ("full", "partial")}

    def search_thresholds(self, threshold: float | None = None, fpir: float | None = None,
                          gallery_size: int | None = None) -> dict[str, float]:
        """The squared L2 threshold per extractor for 1:N search (``Gallery.identify``/``search``).

        ``threshold``: that one for both. Else the pack's open-set thresholds: as stored (for
        galleries of ``pack.thresholds.search_gallery_size`` at ``search_fpir``), or, given ``fpir``
        and/or ``gallery_size`` (e.g. ``len(gallery)``), read off its calibration curve. The curve
        only ever makes a smaller gallery's thresholds as strict as the stored ones, never looser: its
        model (impostor meetings taken as independent) is not conservative, and loosened for a gallery
        of 500 LFW DevTest people it named 2.0% of bare strangers instead of 1%. A pack
        without them falls back to its 1:1 verification thresholds with a ``SearchThresholdWarning``
        (too loose: strangers get named)."""
        import warnings

        if threshold is not None and fpir is not None:
            raise BFMError("give a search threshold or an FPIR, not both")
        if threshold is not None:
            check_distance(threshold, "search threshold")
            return {"full": float(threshold), "partial": float(threshold)}
        th = self.pack.thresholds
        if th.search_curve and (fpir is not None or gallery_size is not None):
            if gallery_size is not None and th.search_gallery_size is not None:
                gallery_size = max(int(gallery_size), th.search_gallery_size)
            clamped = []
            out = th.search_distances_at(fpir, gallery_size, clamped)
            if clamped[0]:
                warnings.warn(f"pack {self.pack.name}: its calibration measured no false match as rare as "
                              f"FPIR "
                              f"{fpir or th.search_fpir:g} in a gallery of {gallery_size} needs; using the "
                              "strictest thresholds it measured", SearchThresholdWarning, stacklevel=2)
            return out
        if fpir is not None:
            th.search_distances_at(fpir)  # raises: no calibration curve
        if th.search_distance is not None:
            return {e: float(th.search_distance_for(e)) for e in ("full", "partial")}
        warnings.warn(f"pack {self.pack.name} has no open-set thresholds; searching with its 1:1 threshold, "
                      "which names strangers: run `bfm models calibrate` on it", SearchThresholdWarning,
                      stacklevel=2)
        return self.verification_thresholds()

    def verify(self, img_a, img_b, threshold: float | None = None) -> Comparison:
        """Same person? The main face of each image, compared by the pair rule.

        ``threshold`` is a squared L2 distance; default: the pack's threshold for the extractor
        the pair rule picks.
        """
        check_image(img_a, "img_a")
        check_image(img_b, "img_b")
        threshold = self.verification_thresholds(threshold)
        faces = []
        for img, label in ((img_a, "img_a"), (img_b, "img_b")):
            found = self.get(img, max_num=1)
            if not found:
                raise ImageError(f"{label}: no face found")
            faces.append(found[0])
        return self.compare(faces[0], faces[1], threshold=threshold)


class SearchThresholdWarning(UserWarning):
    """A 1:N search with a pack that has no open-set thresholds (its 1:1 one is used instead)."""


def check_distance(value, name: str = "threshold") -> float:
    """A squared L2 threshold between normalised embeddings: a number in [0, 4], else one line."""
    try:
        d = float(value)
    except (TypeError, ValueError):
        raise BFMError(f"{name} {value!r}: expected a squared L2 distance in [0, 4]") from None
    if not 0.0 <= d <= 4.0:
        raise BFMError(f"{name} {value}: outside [0, 4] (squared L2 distance between normalised embeddings, "
                       "2 - 2 * cosine)")
    return d


def resolve_pack_dir_or_none(name, root):
    try:
        return resolve_pack_dir(name, root)
    except PackError:
        return None


def _check_embed(embed):
    if embed not in EMBED_MODES:
        raise BFMError(f"embed must be one of {EMBED_MODES}, got {embed!r}")
