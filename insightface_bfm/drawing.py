"""Pictures of analysed faces: each face boxed in the colour of its route and labelled.

A face C calls masked (routed to E_P) gets an orange box and the label ``masked 0.97``; an
unmasked one (E_F) a green box and ``unmasked 0.02``; the number is C's P(masked). A gallery
search adds the identity above it (``Ann 0.71``, the cosine similarity, or ``unknown``).
``FaceAnalysis.draw_on`` and the ``--draw`` option of the commands both draw through here, so
pictures from the library and from the command line agree.
"""

from __future__ import annotations

import cv2
import numpy as np

from .imaging import check_image

# BGR; the two routes of the pair rule, and faces without a verdict of C
ROUTE_COLOURS = {"full": (60, 190, 40), "partial": (0, 140, 255)}
NO_ROUTE_COLOUR = (0, 0, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def mask_label(face) -> str | None:
    """``masked 0.97`` / ``unmasked 0.02`` (C's P(masked)), or None for a face C has not seen."""
    if face.get("masked") is None:
        return None
    score = face.get("mask_score")
    word = "masked" if face["masked"] else "unmasked"
    return word if score is None else f"{word} {float(score):.2f}"


def route_colour(face) -> tuple[int, int, int]:
    extractor = face.get("extractor")
    if extractor is None and face.get("masked") is not None:
        extractor = "partial" if face["masked"] else "full"
    return ROUTE_COLOURS.get(extractor, NO_ROUTE_COLOUR)


def face_box(face, shape) -> np.ndarray:
    """The face's box as ints; an aligned crop (no detector box) is the whole image."""
    bbox = face.get("bbox")
    if bbox is None:
        return np.array([0, 0, shape[1] - 1, shape[0] - 1])
    return np.round(np.asarray(bbox, dtype=np.float64)[:4]).astype(int)


def draw_faces(img: np.ndarray, faces, names=None) -> np.ndarray:
    """A copy of ``img`` with each face boxed in its route's colour and labelled.

    ``names``: optional one line per face drawn above the mask label (e.g. the gallery's answer).
    """
    check_image(img, "image")
    out = img.copy()
    h, w = out.shape[:2]
    thick = max(2, round(max(h, w) / 400))  # at least insightface's own box, which it covers
    placed = []  # label rectangles already drawn: a label never covers another
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = face_box(face, out.shape)
        colour = route_colour(face)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        lines = [names[i]] if names is not None and names[i] else []
        label = mask_label(face)
        if label is not None:
            lines.append(label)
        # text about a third of the box wide, readable on small crops and large photos alike
        scale = float(np.clip((x2 - x1) / 180.0, 0.3, 1.5))
        if face.get("bbox") is None:  # an aligned crop: the label covers as little of it as it can
            scale = 0.3
        _label_block(out, lines, (x1, y1, x2, y2), colour, scale, max(1, round(scale * 1.5)), placed)
    return out


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_position(box, size, image_shape, placed) -> tuple[int, int]:
    """Top-left corner of a ``size`` (w, h) label for ``box``: above it when there is room, else inside
    its top edge, else below it; then further up or down in steps, until it overlaps no rectangle of
    ``placed`` (x1, y1, x2, y2) and fits the image. None fits: the first choice."""
    x1, y1, _, y2 = box
    w, h = size
    img_h, img_w = image_shape[:2]
    left = int(np.clip(x1, 0, max(0, img_w - w)))
    tops = [y1 - h, y1, y2] + [y1 - h - k * h for k in range(1, 8)] + [y2 + k * h for k in range(1, 8)]
    fits = [t for t in tops if 0 <= t and t + h <= img_h]
    for top in fits:
        if not any(_overlaps((left, top, left + w, top + h), r) for r in placed):
            return left, int(top)
    return left, int(fits[0] if fits else max(0, min(y1, img_h - h)))


def _label_block(img, lines, box, colour, scale, thick, placed=None):
    if not lines:
        return
    placed = [] if placed is None else placed
    sizes = [cv2.getTextSize(t, FONT, scale, thick) for t in lines]
    line_h = max(s[0][1] + s[1] for s in sizes) + 4
    block_h = line_h * len(lines)
    block_w = max(s[0][0] for s in sizes) + 6
    left, top = label_position(box, (block_w, block_h), img.shape, placed)
    placed.append((left, top, left + block_w + 1, top + block_h + 1))  # cv2 draws both edges
    cv2.rectangle(img, (left, top), (left + block_w, top + block_h), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 300 else (255, 255, 255)
    for j, (text, ((_, th), _)) in enumerate(zip(lines, sizes)):
        y = top + j * line_h + th + 2
        cv2.putText(img, text, (left + 3, y), FONT, scale, ink, thick, cv2.LINE_AA)
