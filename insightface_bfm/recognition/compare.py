"""Are two photos the same person? The main face of each, compared by the pair rule.

``compare_images(app, a, b)`` is what ``bfm compare`` runs: C decides the case (1 both
unmasked, 2 one masked, 3 both masked) and so the extractor (E_F for case 1, E_P otherwise);
the squared L2 distance of the normalised embeddings is held against the threshold (default:
the pack's, for that extractor): at or below it, the same person.
"""

from __future__ import annotations

from ..errors import NoFaceError
from ..imaging import read_image
from .analyze import face_record, image_faces


def compare_images(app, image_a, image_b, *, threshold: float | None = None, aligned: bool = False) -> dict:
    """Compare the main faces of two image files; returns the JSON record of ``bfm compare``."""
    return compare_pictures(app, read_image(image_a), read_image(image_b), image_a, image_b,
                            threshold=threshold, aligned=aligned)


def compare_pictures(app, img_a, img_b, image_a, image_b, *, threshold: float | None = None,
                     aligned: bool = False) -> dict:
    """``compare_images`` on two decoded BGR images named ``image_a`` and ``image_b`` (what ``bfm
    serve`` answers for two uploads)."""
    thresholds = app.verification_thresholds(threshold)
    faces = []
    for img, path in ((img_a, image_a), (img_b, image_b)):
        found = image_faces(app, img, path, aligned=aligned, main_only=True)
        if not found:
            raise NoFaceError(f"{path}: no face found")
        faces.append(found[0])
    result = app.compare(faces[0], faces[1], threshold=thresholds)
    return {
        "image_a": str(image_a),
        "image_b": str(image_b),
        "face_a": face_record(faces[0]),
        "face_b": face_record(faces[1]),
        "case": result.case,
        "extractor": result.extractor,
        "similarity": round(result.similarity, 6),
        "distance": round(result.distance, 6),
        "threshold": result.threshold,
        "same": bool(result.same),
    }
