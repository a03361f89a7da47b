"""A pack's way to a user: built -> `bfm models publish` -> served over http on 127.0.0.1 ->
`FaceAnalysis(name=...)` in a fresh process downloads, verifies and analyses; an interrupted
download resumes; an altered archive is refused with nothing installed. Also: registries merged
(file, folder, URL, $INSIGHTFACE_BFM_REGISTRY), local packs in `bfm models list` / `verify`, and
the plugin registered by `import insightface_bfm` alone."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from bfm_inference_helpers import make_export
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.errors import ChecksumError, PackError
from insightface_bfm.train.recipe import Recipe
from insightface_bfm.zoo.download import RECEIPT
from insightface_bfm.zoo.packs import build_pack
from insightface_bfm.zoo.registry import REGISTRY_ENV, ensure_pack, load_registries

REPO = Path(__file__).resolve().parents[1]
T1 = Path(__import__("insightface").__file__).parent / "data" / "images" / "t1.jpg"


def fresh_python(code: str, **env):
    """``python -c code`` in a new interpreter that imports this checkout's package."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def built_recipe(tmp_path):
    """A pack's recipe as ``bfm models build`` records it: the builder's own absolute paths."""
    return Recipe.from_dict({
        "mode": "bfm",
        "data": {"path": str(tmp_path / "work" / "data" / "train")},
        "init": {"full": f"onnx:{tmp_path / 'models' / 'base.onnx'}", "freeze_full": True},
        "train": {"output": str(tmp_path / "work" / "run")},
    }, check_paths=False).to_dict()


@pytest.fixture
def published(tmp_path, shared, server):
    """A pack built from an export + the shared SCRFD, published with the CLI, served by ``server``."""
    export = make_export(tmp_path / "export", shared("models", "mobilefacenet_128.onnx"))
    detector = shared("models", "scrfd_2.5g_bnkps.onnx")
    info = {"heldout": {"bfm": {"case1": {"accuracy": 0.9}}}, "threshold": {"distance": 1.2},
            "recipe": built_recipe(tmp_path), "faces": {"folder": str(tmp_path / "lfw112")}}
    pack = build_pack(export, tmp_path / "built" / "tinypack", detector=detector, verification_distance=1.2,
                      build_info=info)
    out = tmp_path / "site"
    r = CliRunner().invoke(main, ["models", "publish", str(pack.path), "--url-base", server.url("/packs"),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    for f in out.iterdir():
        server.files[f"/packs/{f.name}"] = f.read_bytes()
    return out


def test_publish_writes_zip_and_entry(published, server):
    entry = yaml.safe_load((published / "tinypack.yaml").read_text())
    assert entry["kind"] == "bfm" and entry["name"] == "tinypack"
    spec = entry["files"][0]
    assert spec["url"] == server.url("/packs/tinypack.zip")
    assert spec["size"] == len(server.files["/packs/tinypack.zip"])
    assert entry["metrics"]["heldout_accuracy"] == {"bfm": {"case1": 0.9}}
    assert entry["metrics"]["threshold_distance"] == 1.2
    assert "licence" in entry and entry["licence"]
    index = yaml.safe_load((published / "index.yaml").read_text())
    assert [e["name"] for e in index["entries"]] == ["tinypack"]
    # nothing published names a folder of the publishing machine (tmp_path stands for it): the
    # recipe's paths are cut to <local>/ + their last part, in the entry and in the zipped manifest
    local = str(published.parent)
    recipe = entry["recipe"]
    assert recipe["data"]["path"] == "<local>/train" and recipe["train"]["output"] == "<local>/run"
    assert recipe["init"]["full"] == "onnx:<local>/base.onnx" and recipe["init"]["freeze_full"] is True
    Recipe.from_dict(recipe, check_paths=False)  # still a recipe
    with zipfile.ZipFile(published / "tinypack.zip") as zf:
        zipped = json.loads(zf.read("tinypack/manifest.json"))
    assert local not in json.dumps(zipped) and local not in (published / "tinypack.yaml").read_text()
    assert zipped["bfm"]["build"]["faces"]["folder"] == "<local>/lfw112"
    assert zipped["bfm"]["build"]["recipe"] == recipe
    built = json.loads((published.parent / "built" / "tinypack" / "manifest.json").read_text())
    assert zipped["bfm"]["files"] == built["bfm"]["files"]  # the pack's files are as built
    # the same pack published twice gives the same archive bytes
    before = (published / "tinypack.zip").read_bytes()
    CliRunner().invoke(main, ["models", "publish", str(published.parent / "built" / "tinypack"),
                              "--url-base", server.url("/packs"), "--out", str(published)])
    assert (published / "tinypack.zip").read_bytes() == before


def test_first_use_downloads_verifies_and_analyses_in_a_fresh_process(published, server, tmp_path):
    root = tmp_path / "root"
    cut = 3 * 2**20 + 12_345  # the first transfer is cut after 3 MiB and a bit: the download resumes
    server.drop_after["/packs/tinypack.zip"] = cut
    code = (
        "import cv2, sys\n"
        "from insightface_bfm import FaceAnalysis\n"
        f"app = FaceAnalysis(name='tinypack', root={str(root)!r}, providers=['CPUExecutionProvider'])\n"
        "app.prepare(ctx_id=-1, det_size=(640, 640))\n"
        f"faces = app.get(cv2.imread({str(T1)!r}))\n"
        "print('faces', len(faces), app.pack.thresholds.verification_distance)\n"
    )
    r = fresh_python(code, **{REGISTRY_ENV: server.url("/packs/index.yaml")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "faces 6 " in r.stdout and "1.2" in r.stdout, r.stdout
    ranges = [rng for path, rng in server.log if path == "/packs/tinypack.zip"]
    assert ranges[0] is None and len(ranges) == 2, ranges
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # the whole 1 MiB blocks written
    assert 0 < resumed_at <= cut, ranges
    receipt = json.loads((root / "models" / "tinypack" / RECEIPT).read_text())
    assert receipt["sources"]["tinypack.zip"]["verified"] is True
    assert not list((root / "models" / ".downloads").glob("*"))
    # installed: listed as coming from a registry, verified
    r = CliRunner().invoke(main, ["models", "list", "--root", str(root), "--registry", str(published)])
    assert r.exit_code == 0 and "tinypack" in r.output
    lines = r.output.splitlines()
    below = lines[next(i for i, ln in enumerate(lines) if ln.startswith("installed under")):]
    row = [ln for ln in below if "tinypack" in ln][0]
    assert row.split()[1:] == ["bfm", "v1", "registry", "verified"], row


def test_altered_archive_is_refused_and_nothing_installed(published, server, tmp_path):
    data = bytearray(server.files["/packs/tinypack.zip"])
    data[len(data) // 2] ^= 0xFF
    server.files["/packs/tinypack.zip"] = bytes(data)
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match="sha256"):
        ensure_pack("tinypack", root, registry=server.url("/packs/index.yaml"), progress=False)
    assert not (root / "models" / "tinypack").exists()
    assert not [p for p in (root / "models").iterdir() if p.name != ".downloads"]
    assert not list((root / "models" / ".downloads").glob("*"))


def test_refusals_name_the_ways_to_a_pack(published, server, tmp_path):
    from insightface_bfm import FaceAnalysis

    root = tmp_path / "root"
    with pytest.raises(PackError, match=r"download=False.*bfm models download tinypack"):
        FaceAnalysis(name="tinypack", root=root, download=False, registry=server.url("/packs/index.yaml"))
    assert not (root / "models" / "tinypack").exists()
    with pytest.raises(PackError) as e:
        FaceAnalysis(name="nopack", root=root, registry=str(published))
    message = str(e.value)
    assert "\n" not in message and "bfm models build nopack" in message
    assert "bfm models download nopack" in message


def test_registries_merge_user_first(published, server, tmp_path, monkeypatch):
    other = tmp_path / "other.yaml"
    entry = yaml.safe_load((published / "tinypack.yaml").read_text())
    entry["files"][0]["url"] = "https://example.invalid/tinypack.zip"
    other.write_text(yaml.safe_dump({"entries": [entry]}))
    merged = load_registries([str(other), server.url("/packs/index.yaml")])
    assert merged["tinypack"].files[0].url == "https://example.invalid/tinypack.zip"  # first wins
    assert "buffalo_l" in merged  # the bundled registry comes last
    monkeypatch.setenv(REGISTRY_ENV, f"{server.url('/packs/index.yaml')},{other}")
    assert load_registries()["tinypack"].files[0].url == server.url("/packs/tinypack.zip")
    assert load_registries(str(published))["tinypack"].source.endswith("index.yaml")
    with pytest.raises(PackError, match="HTTP 404"):
        load_registries(server.url("/nothing.yaml"))
    # the README's `bfm models download NAME --registry URL/index.yaml`
    root = tmp_path / "root"
    index = server.url("/packs/index.yaml")
    r = CliRunner().invoke(main, ["models", "download", "tinypack", "--registry", index, "--root", str(root),
                                  "--quiet"])
    assert r.exit_code == 0 and "tinypack installed" in r.output, r.output
    r = CliRunner().invoke(main, ["models", "verify", "tinypack", "--root", str(root)])
    assert r.exit_code == 0 and "files OK" in r.output, r.output


def test_a_manifest_without_local_paths_is_zipped_as_it_is(tmp_path, shared):
    from insightface_bfm.zoo.packs import load_pack
    from insightface_bfm.zoo.publish import pack_zip

    export = make_export(tmp_path / "export", shared("models", "mobilefacenet_128.onnx"))
    pack = build_pack(export, tmp_path / "plain", build_info={"heldout": {}, "recipe": {"mode": "bfm"}})
    # written by hand, say: another layout than the package's, which publishing must not rewrite
    manifest = pack.path / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()), separators=(",", ":")))
    pack_zip(load_pack(pack.path), tmp_path / "plain.zip")
    with zipfile.ZipFile(tmp_path / "plain.zip") as zf:
        assert zf.read("plain/manifest.json") == (pack.path / "manifest.json").read_bytes()


def test_local_packs_are_listed_and_verified(tmp_path, shared):
    export = make_export(tmp_path / "export", shared("models", "mobilefacenet_128.onnx"))
    root = tmp_path / "root"
    detector = shared("models", "scrfd_2.5g_bnkps.onnx")
    build_pack(export, root / "models" / "mine", detector=detector, version="3")
    runner = CliRunner()
    r = runner.invoke(main, ["models", "list", "--root", str(root)])
    row = [ln for ln in r.output.splitlines() if ln.strip().startswith("mine")][0]
    assert row.split() == ["mine", "bfm", "v3", "local", "verified"], r.output
    r = runner.invoke(main, ["models", "verify", "mine", "--root", str(root)])
    assert r.exit_code == 0 and "files OK" in r.output, r.output
    (root / "models" / "mine" / "partial.onnx").write_bytes(b"altered")
    r = runner.invoke(main, ["models", "verify", "mine", "--root", str(root)])
    assert r.exit_code == 2 and "partial.onnx" in r.output and "altered" in r.output
    r = runner.invoke(main, ["models", "list", "--root", str(root)])
    assert "ALTERED" in r.output
    (root / "models" / "mine" / "partial.onnx").unlink()  # a listed file missing: broken, not "no checksums"
    r = runner.invoke(main, ["models", "list", "--root", str(root)])
    assert "BROKEN" in r.output and "no checksums" not in r.output, r.output
    r = runner.invoke(main, ["models", "verify", "absent", "--root", str(root)])
    assert r.exit_code == 2 and "bfm models build absent" in r.output


def test_list_remembers_hashes_by_size_and_mtime_and_verify_rereads(tmp_path, shared, monkeypatch):
    from insightface_bfm.zoo import download

    export = make_export(tmp_path / "export", shared("models", "mobilefacenet_128.onnx"))
    root = tmp_path / "root"
    build_pack(export, root / "models" / "mine", detector=shared("models", "scrfd_2.5g_bnkps.onnx"))
    reads = []
    real = download.sha256_file
    monkeypatch.setattr(download, "sha256_file", lambda path: reads.append(Path(path).name) or real(path))
    runner = CliRunner()
    listed = lambda: runner.invoke(main, ["models", "list", "--root", str(root)]).output  # noqa: E731
    assert "verified" in listed() and len(reads) == 5  # classifier, E_F, E_P, detector, licence
    reads.clear()
    assert "verified" in listed() and reads == []  # nothing changed: nothing read again
    r = runner.invoke(main, ["models", "verify", "mine", "--root", str(root)])
    assert r.exit_code == 0 and len(reads) == 5  # verify reads every byte
    reads.clear()
    partial = root / "models" / "mine" / "partial.onnx"
    partial.write_bytes(partial.read_bytes()[:-1] + b"\0")  # same size, new mtime
    assert "ALTERED" in listed() and reads == ["partial.onnx"]


def test_import_alone_registers_the_mask_classifier_type():
    code = ("import sys, insightface_bfm\n"
            "assert 'insightface' not in sys.modules\n"
            "from insightface.model_zoo.model_zoo import ModelRouter\n"
            "print(hasattr(ModelRouter.get_model, '__bfm_original__'))\n")
    r = fresh_python(code)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_bfm_help_imports_no_heavy_module():
    """`bfm --help` stays fast (about 0.3 s here): it imports neither insightface, ONNX Runtime, cv2 nor
    torch, although `import insightface_bfm` registers the plugin."""
    code = ("import sys\n"
            "from insightface_bfm.cli import main\n"
            "try:\n    main(['--help'], prog_name='bfm')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('insightface', 'onnxruntime', 'cv2', 'torch') if m in sys.modules))\n")
    r = fresh_python(code)
    assert r.returncode == 0 and "models" in r.stdout and r.stdout.strip().endswith("[]"), r.stdout + r.stderr
