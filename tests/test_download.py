"""Downloads against a local HTTP server on 127.0.0.1 (with Range support), extraction, install."""

import errno
import hashlib
import io
import json
import socket
import zipfile

import pytest
import yaml
from click.testing import CliRunner

from insightface_bfm.errors import ChecksumError, DownloadError, PackError
from insightface_bfm.zoo import download as dl
from insightface_bfm.zoo.registry import load_registry, parse_registry, verify_installed


def _payload(n=300_000, seed=0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def test_interrupted_then_resumed_with_range(server, tmp_path):
    data = _payload()
    server.files["/m.bin"] = data
    server.drop_after["/m.bin"] = 100_000
    dest = dl.download_file(
        server.url("/m.bin"), tmp_path / "m.bin", sha256=_sha(data), backoff=0, progress=False, chunk=4096
    )
    assert dest.read_bytes() == data and not (tmp_path / "m.bin.part").exists()
    assert len(server.log) == 2 and server.log[0][1] is None
    resumed_at = int(server.log[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 100_000


def test_resume_from_part_left_by_killed_process(server, tmp_path):
    data = _payload()
    server.files["/m.bin"] = data
    (tmp_path / "m.bin.part").write_bytes(data[:123_456])
    dl.download_file(
        server.url("/m.bin"), tmp_path / "m.bin", sha256=_sha(data), size=len(data), progress=False
    )
    assert (tmp_path / "m.bin").read_bytes() == data
    assert server.log == [("/m.bin", "bytes=123456-")]


def test_server_ignoring_range_restarts(server, tmp_path):
    data = _payload()
    server.files["/m.bin"], server.ignore_range = data, True
    (tmp_path / "m.bin.part").write_bytes(b"x" * 5000)
    dl.download_file(server.url("/m.bin"), tmp_path / "m.bin", sha256=_sha(data), progress=False)
    assert (tmp_path / "m.bin").read_bytes() == data


def test_retry_after_server_error(server, tmp_path):
    server.files["/m.bin"] = b"abc" * 1000
    server.fail_first.add("/m.bin")
    dl.download_file(
        server.url("/m.bin"), tmp_path / "m.bin", sha256=_sha(b"abc" * 1000), backoff=0, progress=False
    )
    assert len(server.log) == 2


def test_wrong_checksum(server, tmp_path):
    server.files["/m.bin"] = b"hello" * 100
    with pytest.raises(ChecksumError, match="differs from the expected"):
        dl.download_file(server.url("/m.bin"), tmp_path / "m.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_404_is_not_retried_and_says_where_to_put_file(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*put it at .*m\.bin"):
        dl.download_file(server.url("/missing"), tmp_path / "m.bin", progress=False, backoff=0)
    assert len(server.log) == 1


def _closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


def test_no_network(tmp_path):
    port = _closed_port()
    with pytest.raises(DownloadError, match=r"failed after 2 attempts.*by hand.*m\.bin"):
        dl.download_file(
            f"http://127.0.0.1:{port}/m.bin", tmp_path / "m.bin", retries=1, backoff=0, progress=False
        )


def test_file_placed_by_hand_is_used_offline(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"offline")
    out = dl.download_file("http://127.0.0.1:9/none", tmp_path / "m.bin", sha256=_sha(b"offline"), retries=0)
    assert out.read_bytes() == b"offline"


def test_disk_full(server, tmp_path, monkeypatch):
    data = _payload(50_000)
    server.files["/m.bin"] = data
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(DownloadError, match="no space left"):
        dl.download_file(server.url("/m.bin"), tmp_path / "m.bin", size=len(data), progress=False)
    monkeypatch.undo()

    real_open = open

    class FullFile(io.BytesIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        return FullFile() if str(path).endswith(".part") else real_open(path, mode, *a, **k)

    monkeypatch.setattr(dl, "open", fake_open, raising=False)
    with pytest.raises(DownloadError, match="no space left.*resumes"):
        dl.download_file(server.url("/m.bin"), tmp_path / "m.bin", progress=False)


def _zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            if isinstance(data, zipfile.ZipInfo):
                zf.writestr(data, b"target")
            else:
                zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("bad", ["../evil.txt", "a/../../evil.txt", "/abs.txt", "C:/x.txt"])
def test_zip_slip_rejected(tmp_path, bad):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"ok.txt": b"ok", bad: b"evil"}))
    with pytest.raises(DownloadError, match="unsafe entry"):
        dl.extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_zip_symlink_rejected_and_safe_zip_extracted(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = 0o120777 << 16
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"link": link}))
    with pytest.raises(DownloadError, match="symbolic link"):
        dl.extract_zip(archive, tmp_path / "out")
    archive.write_bytes(_zip({"pk/x.onnx": b"1", "pk/sub/y.txt": b"2"}))
    names = dl.extract_zip(archive, tmp_path / "out", strip_top="pk")
    assert sorted(names) == ["sub/y.txt", "x.onnx"] and (tmp_path / "out" / "x.onnx").read_bytes() == b"1"


def _registry_file(tmp_path, server, sha):
    server.files["/pk.zip"] = _zip({"pk/det.onnx": b"detector", "pk/rec.onnx": b"recogniser"})
    entry = {
        "name": "pk",
        "kind": "insightface",
        "description": "test pack",
        "licence": "test",
        "files": [
            {"name": "pk.zip", "url": server.url("/pk.zip"), "sha256": sha, "size": None, "extract": True}
        ],
    }
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump({"entries": [entry]}))
    return path, _sha(server.files["/pk.zip"])


def test_install_verify_remove_via_cli(server, tmp_path):
    from insightface_bfm.cli import main

    reg, digest = _registry_file(tmp_path, server, None)
    root = tmp_path / "root"
    runner = CliRunner()
    common = ["--root", str(root), "--registry", str(reg)]
    r = runner.invoke(main, ["models", "list", *common])
    assert (
        r.exit_code == 0 and "pk" in r.output and "sha256 unknown" in r.output and "not installed" in r.output
    )
    r = runner.invoke(main, ["models", "download", "pk", *common, "--quiet"])
    assert r.exit_code == 2 and "publishes no sha256" in r.output
    r = runner.invoke(main, ["models", "download", "pk", *common, "--quiet", "--sha256", f"pk.zip={digest}"])
    assert r.exit_code == 0, r.output
    assert (root / "models" / "pk" / "det.onnx").read_bytes() == b"detector"
    assert not (root / "models" / ".downloads" / "pk.zip").exists()
    r = runner.invoke(main, ["models", "verify", "pk", *common])
    assert r.exit_code == 0 and "2 files OK" in r.output
    (root / "models" / "pk" / "rec.onnx").write_bytes(b"tampered")
    r = runner.invoke(main, ["models", "verify", "pk", *common])
    assert r.exit_code == 2 and "rec.onnx" in r.output
    r = runner.invoke(main, ["models", "remove", "pk", "--root", str(root), "--yes"])
    assert r.exit_code == 0 and not (root / "models" / "pk").exists()
    # unverified download: allowed on request, and verify says so until told to accept it
    r = runner.invoke(main, ["models", "download", "pk", *common, "--quiet", "--allow-unverified"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["models", "verify", "pk", *common])
    assert r.exit_code == 2 and "without a published sha256" in r.output
    r = runner.invoke(main, ["models", "verify", "pk", *common, "--allow-unverified"])
    assert r.exit_code == 0 and "unverified source: pk.zip" in r.output
    r = runner.invoke(main, ["models", "download", "pk", *common, "--quiet", "--allow-unverified"])
    assert r.exit_code == 2 and "already installed" in r.output
    # the command it suggests works as printed (it names the root the download used)
    hint = r.output.split("`")[1].split()
    assert hint[:3] == ["bfm", "models", "verify"] and hint[-2:] == ["--root", str(root)]
    r = runner.invoke(main, [*hint[1:], "--allow-unverified"])
    assert r.exit_code == 0, r.output
    # it says so before reading any registry: a registry that cannot be reached does not matter
    dead = f"http://127.0.0.1:{_closed_port()}/registry.yaml"
    r = runner.invoke(main, ["models", "download", "pk", "--root", str(root), "--registry", dead, "--quiet"])
    assert r.exit_code == 2 and "already installed" in r.output, r.output


def test_install_env_root_and_hand_placed_archive(server, tmp_path, monkeypatch):
    from insightface_bfm.cli import main

    reg, digest = _registry_file(tmp_path, server, None)
    reg.write_text(reg.read_text().replace("sha256: null", f"sha256: {digest}"))
    root = tmp_path / "envroot"
    downloads = root / "models" / ".downloads"
    downloads.mkdir(parents=True)
    (downloads / "pk.zip").write_bytes(server.files["/pk.zip"])  # put by hand, e.g. offline
    server.files.clear()
    monkeypatch.setenv("INSIGHTFACE_BFM_ROOT", str(root))
    r = CliRunner().invoke(main, ["models", "download", "pk", "--registry", str(reg), "--quiet"])
    assert r.exit_code == 0, r.output
    assert server.log == [] and (root / "models" / "pk" / "rec.onnx").is_file()
    receipt = json.loads((root / "models" / "pk" / dl.RECEIPT).read_text())
    assert receipt["sources"]["pk.zip"]["verified"] is True
    verify_installed(load_registry(reg)["pk"], root)


def test_registry_validation_and_builtin(tmp_path):
    from pathlib import Path

    builtin = load_registry()
    assert {"buffalo_l", "buffalo_s", "antelopev2"} <= set(builtin)
    for name in ("buffalo_l", "buffalo_s", "antelopev2"):
        entry = builtin[name]
        assert entry.kind == "insightface" and not entry.verifiable and "sha256 unknown" in entry.notes
        assert entry.files[0].url.startswith("https://github.com/deepinsight/insightface/releases/download/")
    model_zoo = Path(__file__).resolve().parents[1] / "model_zoo"
    if model_zoo.is_dir():  # the bundled copy is in sync with the repository's entries
        assert load_registry(model_zoo) == builtin
    with pytest.raises(PackError, match="sha256"):
        parse_registry(
            {
                "name": "x",
                "kind": "bfm",
                "files": [{"name": "a.zip", "url": "https://h/a.zip", "sha256": None}],
            },
            "t",
        )
    with pytest.raises(PackError, match="url"):
        parse_registry(
            {"name": "x", "kind": "insightface", "files": [{"name": "a", "url": "ftp://h/a"}]}, "t"
        )
    with pytest.raises(PackError, match="not found"):
        load_registry(tmp_path / "none.yaml")
