"""BFM packs: build, load with checksums, insightface manifest-V2 compatibility, errors."""

import json
import shutil

import pytest
from bfm_inference_helpers import copy_detector, make_export

from insightface_bfm.errors import ChecksumError, PackError
from insightface_bfm.zoo.packs import build_pack, find_detector, load_pack


@pytest.fixture
def export(tmp_path, shared):
    return make_export(tmp_path / "export", shared("models", "mobilefacenet_128.onnx"))


@pytest.fixture
def detector(shared):
    return shared("models", "scrfd_2.5g_bnkps.onnx")


def test_build_and_load(tmp_path, export, detector):
    out = tmp_path / "root" / "models" / "bfm_t"
    pack = build_pack(export, out, detector=detector, verification_distance=1.1, version="7")
    assert pack.name == "bfm_t" and pack.version == "7" and pack.embedding_size == 128
    assert pack.detector.name == "scrfd_2.5g_bnkps.onnx"
    assert pack.thresholds.verification_distance == 1.1
    assert pack.thresholds.verification_similarity == pytest.approx(1 - 1.1 / 2)
    assert set(pack.files) == {
        "mask_classifier.onnx",
        "full.onnx",
        "partial.onnx",
        "scrfd_2.5g_bnkps.onnx",
        "MODEL.LICENSE",
    }
    # by name under a root, and as a directory
    assert load_pack("bfm_t", root=tmp_path / "root").path == out.resolve()
    assert load_pack(out).files == pack.files
    # no temporary folders left beside it
    assert sorted(p.name for p in out.parent.iterdir()) == ["bfm_t"]


def test_threshold_per_extractor(tmp_path, export, detector):
    out = tmp_path / "p"
    pack = build_pack(export, out, detector=detector, verification_distance=1.2,
                      verification_distance_partial=1.35)
    assert pack.manifest["bfm"]["thresholds"] == {"mask_score": 0.5, "verification_distance": 1.2,
                                                  "verification_distance_partial": 1.35}
    assert (pack.thresholds.distance_for("full"), pack.thresholds.distance_for("partial")) == (1.2, 1.35)
    # a pack with one threshold has no partial key: older readers see the manifest they know
    one = build_pack(export, tmp_path / "q", detector=detector, verification_distance=1.2)
    assert "verification_distance_partial" not in one.manifest["bfm"]["thresholds"]
    with pytest.raises(PackError, match="E_P's verification distance 4.5: must be in"):
        build_pack(export, tmp_path / "r", detector=detector, verification_distance=1.2,
                   verification_distance_partial=4.5)
    with pytest.raises(PackError, match="needs E_F's"):
        build_pack(export, tmp_path / "r", detector=detector, verification_distance_partial=1.3)
    # a manifest edited by hand: the bad key is named
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["bfm"]["thresholds"]["verification_distance_partial"] = 7
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="verification_distance_partial must be in"):
        load_pack(out)


def test_insightface_accepts_manifest(tmp_path, export, detector):
    from insightface.model_zoo.package_manifest import load_model_package

    out = build_pack(export, tmp_path / "p", detector=detector).path
    package = load_model_package(out)
    assert set(package.tasks) == {"detection", "recognition"}
    assert package.task("recognition").file == "full.onnx"
    assert package.task("recognition").metadata["embedding_dimension"] == 128
    assert (
        package.task("detection").sha256
        == json.loads((out / "manifest.json").read_text())["bfm"]["files"]["scrfd_2.5g_bnkps.onnx"]
    )


def test_det_pack_source_and_env_root(tmp_path, export, detector, monkeypatch):
    legacy = tmp_path / "root" / "models" / "legacy_det"
    copy_detector(detector, legacy)
    shutil.copyfile(export / "full.onnx", legacy / "w.onnx")  # a recogniser beside it is skipped
    monkeypatch.setenv("INSIGHTFACE_BFM_ROOT", str(tmp_path / "root"))
    assert find_detector("legacy_det") == (legacy / "scrfd_2.5g_bnkps.onnx").resolve()
    pack = build_pack(export, tmp_path / "out", det_pack="legacy_det")
    assert pack.detector.name == "scrfd_2.5g_bnkps.onnx"
    with pytest.raises(PackError, match="bfm models download nope"):
        build_pack(export, tmp_path / "out2", det_pack="nope")


def test_altered_file_is_named(tmp_path, export, detector):
    pack = build_pack(export, tmp_path / "p", detector=detector)
    with open(pack.partial, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ChecksumError, match="partial.onnx"):
        load_pack(pack.path)


def test_missing_file_is_named(tmp_path, export, detector):
    pack = build_pack(export, tmp_path / "p", detector=detector)
    pack.classifier.unlink()
    with pytest.raises(PackError, match="mask_classifier.onnx: missing"):
        load_pack(pack.path)


def test_read_verified_catches_late_change(tmp_path, export, detector):
    pack = build_pack(export, tmp_path / "p", detector=detector)
    pack.full.write_bytes(b"swapped after load")
    with pytest.raises(ChecksumError, match="full.onnx"):
        pack.read_verified(pack.full)


def test_bad_manifests(tmp_path, export, detector):
    with pytest.raises(PackError, match="not found|no directory"):
        load_pack("absent", root=tmp_path)
    pack = build_pack(export, tmp_path / "p", detector=detector)
    manifest = pack.path / "manifest.json"
    raw = json.loads(manifest.read_text())
    del raw["bfm"]
    manifest.write_text(json.dumps(raw))
    with pytest.raises(PackError, match="plain insightface pack"):
        load_pack(pack.path)
    manifest.write_text("{not json")
    with pytest.raises(PackError, match="unreadable manifest"):
        load_pack(pack.path)


def test_build_rejects_bad_exports(tmp_path, export, detector):
    with pytest.raises(PackError, match="already exists"):
        build_pack(export, tmp_path, detector=detector)
    (export / "partial.onnx").unlink()
    with pytest.raises(PackError, match="partial.onnx"):
        build_pack(export, tmp_path / "p", detector=detector)
    assert not (tmp_path / "p").exists()
    shutil.copyfile(export / "full.onnx", export / "partial.onnx")  # role metadata says "full"
    with pytest.raises(PackError, match="role 'full'"):
        build_pack(export, tmp_path / "p", detector=detector)
    make_export(export, export / "full.onnx")
    with pytest.raises(PackError, match="outputs"):
        build_pack(export, tmp_path / "p", detector=export / "full.onnx")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bfm_pack_cli(tmp_path, export, detector):
    from click.testing import CliRunner

    from insightface_bfm.cli import main

    runner = CliRunner()
    out = tmp_path / "models" / "cli_pack"
    r = runner.invoke(
        main, ["pack", str(export), str(out), "--detector", str(detector), "--distance-threshold", "1.2"]
    )
    assert r.exit_code == 0, r.output
    assert "sha256 verified" in r.output
    assert load_pack(out).thresholds.verification_distance == 1.2
    assert load_pack(out).thresholds.distance_for("partial") == 1.2  # one threshold for both
    r = runner.invoke(main, ["pack", str(export), str(tmp_path / "two"), "--detector", str(detector),
                             "--distance-threshold", "1.2", "--partial-distance-threshold", "1.35"])
    assert r.exit_code == 0, r.output
    thresholds = load_pack(tmp_path / "two").thresholds
    assert (thresholds.distance_for("full"), thresholds.distance_for("partial")) == (1.2, 1.35)
    r = runner.invoke(main, ["pack", str(export), str(tmp_path / "x")])
    assert r.exit_code == 2 and "--det-pack" in r.output
    r = runner.invoke(main, ["pack", str(export), str(out), "--detector", str(detector)])
    assert r.exit_code == 2 and "already exists" in r.output
