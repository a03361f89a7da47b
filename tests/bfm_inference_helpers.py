"""Small ONNX graphs and packs for the inference tests (no torch).

The mask classifiers here are plumbing stand-ins with the exporter's interface
(input [batch,3,112,112] normalised RGB, output logits [batch,2], metadata role): one reads
the darkness of the lower face, the others always answer masked / unmasked, so tests can
check that C's output drives the choice of extractor.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(model, path, role):
    if role is not None:
        model.metadata_props.add(key="role", value=role)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def make_classifier(path, mode="darkness", *, role="mask_classifier", batch="batch"):
    """A tiny classifier ONNX.

    mode "darkness": masked when the mean of rows 64..112 (the lower face) in [-1,1] is
    below -0.2 (dark masks); "masked" / "unmasked": a constant answer.
    """
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 112, 112])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])
    s, t = 20.0, -0.2
    if mode == "darkness":
        w, b = [[s, -s]], [-s * t, s * t]
    elif mode == "masked":
        w, b = [[0.0, 0.0]], [-4.0, 4.0]
    elif mode == "unmasked":
        w, b = [[0.0, 0.0]], [4.0, -4.0]
    else:
        raise ValueError(mode)
    inits = [
        numpy_helper.from_array(np.array([64], np.int64), "starts"),
        numpy_helper.from_array(np.array([112], np.int64), "ends"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.array(w, np.float32), "W"),
        numpy_helper.from_array(np.array(b, np.float32), "B"),
    ]
    nodes = [
        helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["lower"]),
        helper.make_node("ReduceMean", ["lower"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["m"]),
        helper.make_node("MatMul", ["m", "W"], ["mw"]),
        helper.make_node("Add", ["mw", "B"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "mask_classifier", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return _save(model, path, role)


def make_extractor(src, path, role, *, negate=False):
    """A copy of a recognition ONNX with a role; ``negate`` appends Neg so E_P differs from E_F."""
    model = onnx.load(str(src))
    if negate:
        out = model.graph.output[0]
        inner = out.name + "_pre_neg"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
        model.graph.node.append(helper.make_node("Neg", [inner], [out.name]))
    del model.metadata_props[:]
    return _save(model, path, role)


def make_export(directory, recogniser, classifier_mode="darkness"):
    """An export directory (mask_classifier.onnx, full.onnx, partial.onnx = -full)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    make_classifier(directory / "mask_classifier.onnx", classifier_mode)
    make_extractor(recogniser, directory / "full.onnx", "full")
    make_extractor(recogniser, directory / "partial.onnx", "partial", negate=True)
    return directory


def one_line_error(res, *words):
    """A click result that failed as the CLI fails on bad input: exit 2, one line "Error: ...", holding
    each of ``words``."""
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def make_standin_pack(out, recogniser, detector, **thresholds):
    """The tests' stand-in BFM pack at ``out``: ``make_export`` beside it ("darkness" classifier,
    ``recogniser`` as E_F and, negated, as E_P) packed with ``detector``; ``thresholds`` go to
    ``build_pack`` (e.g. ``verification_distance=1.2``). Returns the ``Pack``."""
    from insightface_bfm.zoo.packs import build_pack

    out = Path(out)
    export = make_export(out.parent / f".{out.name}_export", recogniser, classifier_mode="darkness")
    return build_pack(export, out, detector=detector, **thresholds)


def make_face_folder(root, n, identities=2, name="img{i}.png"):
    """``n`` noise 112x112 "crops" in ``identities`` sub-folders (id0, id1, ...): plumbing input."""
    import cv2

    rng = np.random.default_rng(0)
    root = Path(root)
    for i in range(n):
        d = root / f"id{i % identities}"
        d.mkdir(parents=True, exist_ok=True)
        img = np.clip(rng.normal(140, 20, (112, 112, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(d / name.format(i=i)), img)
    return root


def copy_detector(src, directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(src, directory / Path(src).name))


def make_clip(path, walker, stander, app, *, frames=20, mask_from=10, fps=10, size=(640, 300)):
    """A real video, written by OpenCV: ``walker`` (a raw LFW photo) crosses the left part of the
    picture from left to right and, from frame ``mask_from`` on, wears a dark mask (the per-image
    renderer, type "dark", placed on SCRFD's keypoints: what the "darkness" classifier sees);
    ``stander`` stays still on the right, unmasked. ``app`` (a FaceAnalysis) finds the keypoints."""
    import cv2

    from insightface_bfm.masks import render_mask

    def face_crop(photo):
        img = cv2.imread(str(photo))  # LFW raw, 250x250: the face in the middle
        kps = app.get(img, max_num=1)[0].kps - np.array([30, 20], np.float32)
        return img[20:230, 30:220], kps

    plain, kps = face_crop(walker)
    masked, _ = render_mask(plain, kps, style="dark", rng=0)  # seeded: the same mask every run
    other, _ = face_crop(stander)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), path
    for i in range(frames):
        canvas = np.full((h, w, 3), 90, np.uint8)
        x = 10 + round(190 * i / max(1, frames - 1))
        face = masked if i >= mask_from else plain
        canvas[50:50 + face.shape[0], x:x + face.shape[1]] = face
        canvas[50:50 + other.shape[0], w - 10 - other.shape[1]:w - 10] = other
        writer.write(canvas)
    writer.release()
    return Path(path)
