"""insightface's get_model routes our classifier to MaskClassifierONNX; the rest as before."""

import numpy as np
import pytest
from bfm_inference_helpers import make_classifier, make_extractor

from insightface_bfm.runtime import MaskClassifierONNX
from insightface_bfm.zoo import registration


@pytest.fixture
def registered():
    registration.register()
    yield
    registration.register()  # leave it installed, as importing insightface_bfm.zoo does


def test_classifier_routed(tmp_path, registered):
    from insightface.model_zoo import get_model

    path = make_classifier(tmp_path / "c.onnx", "masked")
    model = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(model, MaskClassifierONNX) and model.taskname == "mask_classifier"
    crops = np.zeros((3, 112, 112, 3), np.uint8)
    assert model.scores(crops).shape == (3,) and (model.scores(crops) > 0.5).all()


def test_two_wide_without_role_is_classifier_but_other_roles_are_not(tmp_path, registered):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    no_role = make_classifier(tmp_path / "no_role.onnx", "unmasked", role=None)
    assert isinstance(get_model(str(no_role), providers=["CPUExecutionProvider"]), MaskClassifierONNX)
    plain = make_classifier(tmp_path / "plain.onnx", "unmasked", role="unknown")
    # a graph declaring another role is left to insightface even when 2-wide
    assert isinstance(get_model(str(plain), providers=["CPUExecutionProvider"]), ArcFaceONNX)


def test_other_models_unchanged_and_unregister(tmp_path, shared):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    registration.register()
    assert registration.register() is False  # idempotent
    det = get_model(str(shared("models", "scrfd_2.5g_bnkps.onnx")), providers=["CPUExecutionProvider"])
    rec = get_model(str(shared("models", "mobilefacenet_128.onnx")), providers=["CPUExecutionProvider"])
    assert isinstance(det, SCRFD) and isinstance(rec, ArcFaceONNX)
    role_full = make_extractor(shared("models", "mobilefacenet_128.onnx"), tmp_path / "full.onnx", "full")
    assert isinstance(get_model(str(role_full), providers=["CPUExecutionProvider"]), ArcFaceONNX)
    path = make_classifier(tmp_path / "c.onnx")
    try:
        assert registration.unregister() is True and not registration.is_registered()
        assert registration.unregister() is False
        # without the patch, insightface misroutes the classifier as a recogniser (why we patch)
        assert type(get_model(str(path), providers=["CPUExecutionProvider"])) is ArcFaceONNX
    finally:
        registration.register()
    assert isinstance(get_model(str(path), providers=["CPUExecutionProvider"]), MaskClassifierONNX)


def test_legacy_folder_face_analysis_gets_mask_flags(tmp_path, shared):
    """A plain insightface FaceAnalysis over a legacy folder holding C also fills masked/mask_score."""
    import shutil

    import cv2
    from insightface.app import FaceAnalysis as InsightFaceAnalysis

    import insightface_bfm.zoo  # noqa: F401  (installs the routing)

    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copyfile(shared("models", "scrfd_2.5g_bnkps.onnx"), folder / "det.onnx")
    shutil.copyfile(shared("models", "mobilefacenet_128.onnx"), folder / "rec.onnx")
    make_classifier(folder / "mask.onnx", "masked")
    app = InsightFaceAnalysis(name=str(folder), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(320, 320))
    assert set(app.models) == {"detection", "recognition", "mask_classifier"}
    img = cv2.imread(str(sorted(shared("data", "lfw_raw").glob("*/*.jpg"))[0]))
    faces = app.get(img)
    assert faces and all(f.masked is True and f.mask_score > 0.9 for f in faces)
    assert faces[0].embedding.shape == (128,)


def test_exported_mask_classifier_routes(tmp_path):
    """The exporter's real graph (nets.MaskClassifier through export_onnx) routes to our model type."""
    torch = pytest.importorskip("torch")
    from insightface.model_zoo import get_model

    from insightface_bfm.export import export_onnx
    from insightface_bfm.nets import MaskClassifier

    torch.manual_seed(0)
    net = MaskClassifier().eval()
    path = export_onnx(net, tmp_path / "mask_classifier.onnx", "mask_classifier")
    model = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(model, MaskClassifierONNX) and model.outputs_probabilities
    crops = np.random.default_rng(0).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    blob = torch.from_numpy(((crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)) - 127.5) / 127.5)
    with torch.no_grad():
        expected = torch.softmax(net(blob), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(model.scores(crops), expected, atol=1e-5)
