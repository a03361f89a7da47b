"""FaceAnalysis: detection + C routing + E_F/E_P, on insightface's t1.jpg with the shared SCRFD.

The classifiers are plumbing stand-ins (see bfm_inference_helpers): "masked"/"unmasked"
answer constantly, "darkness" reads the lower face. E_F is mobilefacenet_128 and E_P is the
same network followed by Neg, so which extractor produced an embedding is visible.
"""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from bfm_inference_helpers import copy_detector, make_export

from insightface_bfm import FaceAnalysis
from insightface_bfm.errors import BFMError, ChecksumError, ImageError, PackError
from insightface_bfm.zoo.packs import build_pack


@pytest.fixture(scope="module")
def t1():
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return cv2.imread(str(path))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from conftest import shared_path

    rec = shared_path("models", "mobilefacenet_128.onnx")
    det = shared_path("models", "scrfd_2.5g_bnkps.onnx")
    base = tmp_path_factory.mktemp("bfm_app")
    for mode in ("unmasked", "masked", "darkness"):
        export = make_export(base / f"export_{mode}", rec, classifier_mode=mode)
        build_pack(export, base / "root" / "models" / f"bfm_{mode}", detector=det, verification_distance=1.0)
    build_pack(base / "export_darkness", base / "root" / "models" / "bfm_nodet")
    copy_detector(det, base / "root" / "models" / "legacy_det")
    return base / "root"


@pytest.fixture(scope="module")
def apps(root):
    out = {}
    for mode in ("unmasked", "masked", "darkness"):
        app = FaceAnalysis(name=f"bfm_{mode}", root=root, providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_size=(640, 640))
        out[mode] = app
    return out


@pytest.fixture(scope="module")
def reference(root, t1):
    """Plain insightface FaceAnalysis on the same pack: detector + E_F (manifest V2)."""
    from insightface.app import FaceAnalysis as InsightFaceAnalysis

    app = InsightFaceAnalysis(name=str(root / "models" / "bfm_unmasked"), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app.get(t1)


def test_finds_six_faces_routed_full(apps, t1, reference):
    faces = apps["unmasked"].get(t1)
    assert len(faces) == 6 == len(reference)
    for face, ref in zip(faces, reference):
        assert face.masked is False and face.extractor == "full" and face.mask_score < 0.5
        np.testing.assert_allclose(face.bbox, ref.bbox, atol=1e-3)
        # E_F is exactly what insightface's recognition model gives
        np.testing.assert_allclose(face.embedding, ref.embedding, atol=1e-4)
        assert face.embedding_full is face.embedding and face.embedding_partial is None
        np.testing.assert_allclose(np.linalg.norm(face.normed_embedding), 1.0, atol=1e-5)
        assert face.aligned_crop.shape == (112, 112, 3)


def test_classifier_drives_routing_to_partial(apps, t1, reference):
    faces = apps["masked"].get(t1)
    assert len(faces) == 6
    for face, ref in zip(faces, reference):
        assert face.masked is True and face.extractor == "partial" and face.mask_score > 0.5
        np.testing.assert_allclose(face.embedding, -ref.embedding, atol=1e-4)  # E_P = -E_F here
        assert face.embedding_full is None


def test_embed_both(apps, t1):
    faces = apps["masked"].get(t1, max_num=2, embed="both")
    assert len(faces) == 2
    for face in faces:
        np.testing.assert_allclose(face.embedding_partial, -face.embedding_full, atol=1e-4)
        assert face.embedding is face.embedding_partial
    with pytest.raises(BFMError, match="embed"):
        apps["masked"].get(t1, embed="all")


def test_get_aligned_batched_mixed_routing(apps, t1):
    app = apps["darkness"]
    crops = np.stack([f.aligned_crop for f in apps["unmasked"].get(t1)])
    crops[[1, 4], 64:] = 0  # dark "masks" over the lower face of two crops
    faces = app.get_aligned(crops)
    assert [f.masked for f in faces] == [False, True, False, False, True, False]
    assert [f.extractor for f in faces] == ["full", "partial", "full", "full", "partial", "full"]
    ref = app.full.get_feat(crops)
    for i, face in enumerate(faces):
        np.testing.assert_allclose(face.embedding, -ref[i] if face.masked else ref[i], atol=1e-4)
    assert len(app.get_aligned(list(crops[:2]))) == 2 and app.get_aligned([]) == []


def test_compare_pair_rule_and_lazy_embedding(apps, t1):
    app = apps["darkness"]
    crops = np.stack([f.aligned_crop for f in apps["unmasked"].get(t1)])
    masked_crop = crops[0].copy()
    masked_crop[64:] = 0
    routed = app.get_aligned(np.stack([crops[0], masked_crop, crops[1]]))
    both = app.get_aligned(np.stack([crops[0], masked_crop, crops[1]]), embed="both")
    r = app.compare(routed[0], routed[2])
    assert (r.case, r.extractor) == (1, "full")
    # the pack's own threshold decides by default, as verify does
    assert r.threshold == 1.0 and r.same == (r.distance <= 1.0)
    assert app.compare(routed[0], routed[2], threshold=4.0).same is True
    r2 = app.compare(routed[0], routed[1])  # unmasked face meets a masked one: both through E_P
    assert (r2.case, r2.extractor) == (2, "partial")
    assert routed[0].embedding_partial is not None  # computed from the stored crop, kept
    r3 = app.compare(both[0], both[1])
    assert r2.similarity == pytest.approx(r3.similarity, abs=1e-5)
    assert r2.distance == pytest.approx(2 - 2 * r2.similarity, abs=1e-6)
    assert app.compare(routed[1], routed[1]).case == 3
    no_crop = dict(routed[2])
    no_crop.pop("aligned_crop")
    with pytest.raises(BFMError, match="partial embedding"):
        app.compare(no_crop, routed[1])


def test_verify_uses_pack_threshold(apps, t1, shared):
    app = apps["unmasked"]  # E_F = mobilefacenet_128; the pack's verification distance is 1.0
    assert app.pack.thresholds.verification_distance == 1.0
    r = app.verify(t1, t1)
    assert r.same is True and r.threshold == 1.0 and r.distance < 1e-4 and r.case == 1
    # raw LFW photos (detected here): two of Abdullah Gul, one of Abdullatif Sener (pairsDevTest.txt)
    raw = shared("data", "lfw_raw")
    gul_a, gul_b, sener = (cv2.imread(str(raw / name.rsplit("_", 1)[0] / f"{name}.jpg"))
                           for name in ("Abdullah_Gul_0013", "Abdullah_Gul_0014", "Abdullatif_Sener_0001"))
    same = app.verify(gul_a, gul_b)
    other = app.verify(gul_a, sener)
    assert same.threshold == other.threshold == 1.0
    assert same.distance < 1.0 < other.distance  # the pair lies on either side of the pack's threshold
    assert same.same is True and other.same is False
    # an explicit threshold overrides the pack's
    assert app.verify(gul_a, gul_b, threshold=same.distance / 2).same is False
    assert app.verify(gul_a, sener, threshold=other.distance + 0.1).same is True
    with pytest.raises(ImageError, match="img_b: no face"):
        app.verify(t1, np.zeros((200, 200, 3), np.uint8))


@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "None"),
        (np.zeros((100, 100), np.uint8), "grayscale"),
        (np.zeros((100, 100, 4), np.uint8), "4-channel"),
        (np.zeros((0, 100, 3), np.uint8), "empty"),
        (np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 10, 3)), "exceeds"),
        (np.zeros((100, 100, 3), np.float32), "uint8"),
    ],
)
def test_bad_images(apps, bad, match):
    app = apps["unmasked"]
    with pytest.raises(ImageError, match=match):
        app.get(bad)
    with pytest.raises(ImageError):
        app.verify(bad, bad)


def test_bad_aligned_crops(apps):
    with pytest.raises(ImageError, match=r"crops\[1\].*112x112"):
        apps["unmasked"].get_aligned([np.zeros((112, 112, 3), np.uint8), np.zeros((100, 112, 3), np.uint8)])
    with pytest.raises(ImageError, match="None"):
        apps["unmasked"].get_aligned(None)


def test_detector_from_other_pack(root, t1):
    with pytest.raises(PackError, match="no detector"):
        FaceAnalysis(name="bfm_nodet", root=root)
    with pytest.raises(PackError, match="bfm models download buffalo_x"):
        FaceAnalysis(name="bfm_nodet", root=root, det_pack="buffalo_x")
    app = FaceAnalysis(name="bfm_nodet", root=root, det_pack="legacy_det", providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    assert len(app.get(t1)) == 6
    app2 = FaceAnalysis(name="bfm_nodet", root=root, det_pack=str(root / "models" / "bfm_unmasked"))
    app2.prepare(ctx_id=-1, det_size=(640, 640))
    assert len(app2.get(t1)) == 6


def test_altered_pack_loads_nothing(root, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(root / "models" / "bfm_unmasked", broken)
    with open(broken / "full.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumError, match="full.onnx"):
        FaceAnalysis(name=str(broken))
    (broken / "full.onnx").unlink()
    with pytest.raises(PackError, match="full.onnx: missing"):
        FaceAnalysis(name=str(broken))


def test_overhead_benchmark_runs(shared, capsys):
    import importlib.util
    from pathlib import Path

    shared("models", "scrfd_2.5g_bnkps.onnx")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "app_overhead.py"
    spec = importlib.util.spec_from_file_location("app_overhead", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["-n", "1", "--images", "0", "--det-size", "320", "--classifier", "stand-in"])
    assert result["images"] == 1 and result["faces"] == 6 and result["overhead_ratio"] > 0
    assert "overhead ratio (median):" in capsys.readouterr().out


def test_rendered_masks_route_to_partial(apps, t1):
    """t1.jpg: 6 unmasked faces; after masks.render_mask draws dark masks on them, the same 6
    faces are found and (with the darkness stand-in for C) all routed to E_P."""
    masks = pytest.importorskip("insightface_bfm.masks")
    app = apps["darkness"]
    faces = app.get(t1)
    assert len(faces) == 6 and not any(f.masked for f in faces)
    rng = np.random.default_rng(0)
    masked_img = t1.copy()
    for face in faces:
        masked_img, region = masks.render_mask(
            masked_img, face.kps, masks.random_style(rng, types=["dark"]), rng=rng
        )
        assert region.any()
    after = app.get(masked_img)
    assert len(after) == 6
    assert all(f.masked and f.extractor == "partial" for f in after)
    before_c = np.array([(f.bbox[:2] + f.bbox[2:]) / 2 for f in faces])
    after_c = np.array([(f.bbox[:2] + f.bbox[2:]) / 2 for f in after])
    nearest = np.linalg.norm(before_c[:, None] - after_c[None], axis=2).min(axis=1)
    assert (nearest < 15).all()  # the same faces
