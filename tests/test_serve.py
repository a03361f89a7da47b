"""``bfm serve``: a real server (the `bfm serve` command in its own process, on 127.0.0.1 at a free
port, with torch made unimportable in it) hit by a real HTTP client (httpx).

The pack is the test pack of test_recognition.py: the shared SCRFD, the shared MobileFaceNet as E_F
and (negated) as E_P, and the "darkness" stand-in classifier, so routing is visible with dark masks.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from bfm_inference_helpers import make_standin_pack
from click.testing import CliRunner
from test_no_torch import BLOCK as NO_TORCH

from insightface_bfm.cli import main

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "guides" / "serve.md"
KEY = "s3cret"
THRESHOLD, THRESHOLD_PARTIAL = 1.2, 1.3


def start_server(args, log: Path, env=None) -> tuple[subprocess.Popen, str]:
    """`bfm serve ARGS` in a fresh interpreter where torch cannot be imported; returns it and its URL."""
    code = NO_TORCH + (
        "from insightface_bfm.cli import main\n"
        f"main(args={[str(a) for a in args]!r}, prog_name='bfm')\n"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT,
                                cwd=log.parent, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(r"at (http://127\.0\.0\.1:\d+) ", text)
        if found:
            url = found.group(1)
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"bfm serve exited {proc.returncode}:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"bfm serve did not come up:\n{log.read_text()}")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from conftest import shared_path

    rec = shared_path("models", "mobilefacenet_128.onnx")
    det = shared_path("models", "scrfd_2.5g_bnkps.onnx")
    base = tmp_path_factory.mktemp("serve_pack")
    make_standin_pack(base / "root" / "models" / "bfm", rec, det, verification_distance=THRESHOLD,
                      verification_distance_partial=THRESHOLD_PARTIAL)
    return base / "root" / "models" / "bfm"


def doc_blocks(path, language="bash"):
    text = path.read_text()
    return [b for b in re.findall(rf"```{language}\n(.*?)```", text, re.S)
            if b.startswith("# run by: tests/test_serve.py")]


@pytest.fixture(scope="module")
def service(pack, tmp_path_factory):
    """The server of the guide: its `bfm serve` line as written (but on a free port), the pack
    installed as `bfm` under $INSIGHTFACE_BFM_ROOT and the key in $BFM_API_KEY."""
    blocks = doc_blocks(DOC)
    assert len(blocks) >= 2, "the serve guide has lost its runnable blocks"
    (line,) = [ln for ln in blocks[0].splitlines() if ln.startswith("bfm serve")]
    args = shlex.split(line)[1:]
    args[args.index("--port") + 1] = "0"  # a free port instead of the guide's 8000
    env = {"INSIGHTFACE_BFM_ROOT": str(pack.parents[1]), "BFM_API_KEY": KEY}
    work = tmp_path_factory.mktemp("serve")
    proc, url = start_server(args, work / "serve.log", env=env)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    yield {"url": url, "client": client, "galleries": work / "galleries", "proc": proc,
           "log": work / "serve.log", "work": work, "env": env, "blocks": blocks}
    client.close()
    stop(proc)


@pytest.fixture(scope="module")
def t1():
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="module")
def masked_t1(service, t1, tmp_path_factory):
    """t1.jpg with a dark mask on each of its six faces (the stand-in C sees dark masks), placed on
    the keypoints the service finds."""
    from insightface_bfm.masks import render_mask

    faces = service["client"].post("/v1/analyze", files=files(image=t1)).json()["faces"]
    img = cv2.imread(str(t1))
    for face in faces:
        img, _ = render_mask(img, np.array(face["kps"], np.float32), style="dark", rng=0)
    path = tmp_path_factory.mktemp("masked") / "t1_masked.jpg"
    cv2.imwrite(str(path), img)
    return path


def files(**named):
    return [(field, (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for field, p in named.items()]


def one_line_error(r, status, *words):
    assert r.status_code == status, (r.status_code, r.text)
    assert "\n" not in r.text.strip() and set(r.json()) == {"error", "kind"}, r.text
    for w in words:
        assert w in r.json()["error"], (w, r.text)
    return r.json()


def test_healthz_docs_and_auth(service, pack):
    url, client = service["url"], service["client"]
    health = httpx.get(f"{url}/healthz").json()  # open without the key: load balancers probe it
    assert health["status"] == "ok" and health["sha256_verified"] is True
    assert health["pack_path"] == str(pack) and health["embedding_size"] == 128
    assert "CPUExecutionProvider" in health["providers"] and "full.onnx" in health["files"]
    openapi = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/analyze", "/v1/compare", "/v1/galleries/{name}/identities", "/v1/galleries/{name}/search",
            "/v1/galleries/{name}", "/v1/galleries/{name}/identities/{identity}"} <= set(openapi["paths"])
    assert httpx.get(f"{url}/docs").status_code == 200
    # every other path needs the key, given as a bearer token or X-API-Key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        one_line_error(httpx.get(f"{url}/metrics", headers=headers), 401, "API key")
        one_line_error(httpx.get(f"{url}/v1/galleries/x", headers=headers), 401, "API key")
    assert httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_analyze_routes_masked_faces_and_draws(service, t1, masked_t1):
    client = service["client"]
    r = client.post("/v1/analyze", files=files(image=t1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == "t1.jpg" and len(body["faces"]) == 6
    for face in body["faces"]:
        assert set(face) == {"bbox", "det_score", "masked", "mask_score", "extractor", "kps"}
        assert len(face["bbox"]) == 4 and len(face["kps"]) == 5 and face["det_score"] > 0.5
        assert face["masked"] is False and face["extractor"] == "full"
    r = client.post("/v1/analyze", params={"embedding": 1}, files=files(image=masked_t1))
    faces = r.json()["faces"]
    assert len(faces) == 6 and all(f["masked"] and f["extractor"] == "partial" for f in faces)
    assert all(len(f["embedding"]) == 128 for f in faces)
    r = client.post("/v1/analyze", params={"draw": 1}, files=files(image=masked_t1))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    picture = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == cv2.imread(str(masked_t1)).shape
    from insightface_bfm.drawing import ROUTE_COLOURS

    orange = np.all(np.abs(picture.astype(int) - ROUTE_COLOURS["partial"]) <= 30, axis=-1).sum()
    assert orange > 2000  # six orange (E_P) boxes and labels


def test_compare_by_the_pair_rule(service, shared, tmp_path):
    client = service["client"]
    lfw = shared("data", "lfw112")
    a1, a2 = (lfw / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 2))
    b = lfw / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    r = client.post("/v1/compare", params={"aligned": 1}, files=files(image_a=a1, image_b=a2))
    same = r.json()
    assert (same["case"], same["extractor"], same["same"], same["threshold"]) == (1, "full", True, THRESHOLD)
    assert same["distance"] == pytest.approx(2 - 2 * same["similarity"], abs=1e-5)
    # the service answers exactly what `bfm compare --json` prints
    cli = CliRunner().invoke(main, ["compare", str(a1), str(a2), "--aligned", "--json", "--root",
                                    str(_root(service))])
    cli_record = json.loads(cli.output)
    assert {k: v for k, v in cli_record.items() if not k.startswith("image")} == \
        {k: v for k, v in same.items() if not k.startswith("image")}
    r = client.post("/v1/compare", params={"aligned": 1}, files=files(image_a=a1, image_b=b))
    assert r.json()["same"] is False
    from insightface_bfm.imaging import ARCFACE_KPS
    from insightface_bfm.masks import render_mask

    masked, _ = render_mask(cv2.imread(str(a2)), ARCFACE_KPS, style="dark", rng=0)
    cv2.imwrite(str(tmp_path / "a2_masked.jpg"), masked)
    r = client.post("/v1/compare", params={"aligned": 1},
                    files=files(image_a=a1, image_b=tmp_path / "a2_masked.jpg"))
    r = r.json()
    assert (r["case"], r["extractor"], r["threshold"]) == (2, "partial", THRESHOLD_PARTIAL)
    assert r["face_b"]["masked"] is True


def _root(service):
    health = service["client"].get("/healthz").json()
    return Path(health["pack_path"]).parents[1]


def test_gallery_shared_with_the_cli(service, shared, tmp_path):
    client, galleries = service["client"], service["galleries"]
    raw = shared("data", "lfw_raw")
    people = ["Amanda_Bynes", "Bill_Sizemore", "Ann_Veneman"]
    # enrol two people through the service (two photos of the first in one request)
    r = client.post("/v1/galleries/staff/identities", data={"identity": people[0]},
                    files=[("images", (p.name, p.read_bytes(), "image/jpeg"))
                           for p in sorted((raw / people[0]).glob("*.jpg"))[:1]])
    assert r.status_code == 200, r.text
    assert r.json() == {"gallery": "staff", "identity": people[0], "enrolled": 1, "skipped": 0, "entries": 1,
                        "identities": 1}
    r = client.post("/v1/galleries/staff/identities", data={"identity": people[1]},
                    files=files(images=raw / people[1] / f"{people[1]}_0001.jpg"))
    assert r.json()["entries"] == 2
    # the same image again adds nothing (idempotent, as `bfm gallery enrol`)
    r = client.post("/v1/galleries/staff/identities", data={"identity": people[1]},
                    files=files(images=raw / people[1] / f"{people[1]}_0001.jpg"))
    assert (r.json()["enrolled"], r.json()["skipped"], r.json()["entries"]) == (0, 1, 2)

    # the CLI reads the service's file, and enrols a third person into it
    gallery_file = galleries / "staff.npz"
    listed = CliRunner().invoke(main, ["gallery", "list", str(gallery_file), "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["identities"] == {people[0]: 1, people[1]: 1}
    folder = tmp_path / "more"
    folder.mkdir()
    shutil.copy(raw / people[2] / f"{people[2]}_0001.jpg", folder / f"{people[2]}.jpg")
    root = str(_root(service))
    res = CliRunner().invoke(main, ["gallery", "enrol", str(gallery_file), str(folder), "--root", root,
                                    "--quiet"])
    assert res.exit_code == 0 and "1 enrolled" in res.output, res.output
    # ... which the service sees at once, and finds
    info = client.get("/v1/galleries/staff").json()
    assert info["gallery"] == "staff" and info["entries"] == 3 and set(info["identities"]) == set(people)
    for person in people:
        probe = raw / person / f"{person}_0002.jpg"
        r = client.post("/v1/galleries/staff/search", params={"k": 2}, files=files(image=probe))
        assert r.status_code == 200, r.text
        face = r.json()["faces"][0]
        assert face["identity"] == person and face["matches"][0]["identity"] == person
        assert set(face) >= {"bbox", "masked", "extractor", "identity", "matches"}
        assert len(face["matches"]) == 2
    r = client.post("/v1/galleries/staff/search", params={"draw": 1},
                    files=files(image=raw / people[0] / f"{people[0]}_0002.jpg"))
    assert r.headers["content-type"] == "image/jpeg"
    # remove through the service; the CLI sees it gone
    r = client.delete(f"/v1/galleries/staff/identities/{people[1]}")
    assert r.json() == {"gallery": "staff", "identity": people[1], "removed": 1}
    listed = CliRunner().invoke(main, ["gallery", "list", str(gallery_file), "--json"])
    assert people[1] not in json.loads(listed.output)["identities"]
    one_line_error(client.delete(f"/v1/galleries/staff/identities/{people[1]}"), 404, people[1])
    assert not [p.name for p in galleries.iterdir() if p.name.startswith(".")]  # no lock or temp file left


def test_bad_requests_get_one_line_errors(service, masked_t1, tmp_path):
    client = service["client"]
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    assert one_line_error(client.post("/v1/analyze", files=files(image=tmp_path / "notes.txt")), 400,
                          "notes.txt", "corrupt")["kind"] == "bad_input"
    # no face where one is needed: 422; where none is needed, an empty answer
    assert client.post("/v1/analyze", files=files(image=blank)).json()["faces"] == []
    assert one_line_error(client.post("/v1/compare", files=files(image_a=blank, image_b=blank)), 422,
                          "blank.png", "no face")["kind"] == "no_face"
    r = client.post("/v1/galleries/g2/identities", data={"identity": "x"}, files=files(images=blank))
    one_line_error(r, 422, "no face")
    assert not (service["galleries"] / "g2.npz").exists()  # nothing half-enrolled
    one_line_error(client.post("/v1/compare", files=files(image_a=blank)), 422, "image_b")
    r = client.post("/v1/analyze", params={"aligned": 1}, files=files(image=blank))
    one_line_error(r, 400, "112x112")
    one_line_error(client.get("/v1/galleries/nobody"), 404, "nobody")
    one_line_error(client.post("/v1/galleries/nobody/search", files=files(image=blank)), 404, "nobody")
    one_line_error(client.get("/v1/galleries/..%2Fx"), 404)
    one_line_error(client.get("/v1/galleries/bad name!"), 400, "gallery name")
    one_line_error(client.get("/v1/nothing"), 404)
    # over --max-upload-mb (10 MB by default): 413, by Content-Length and when streamed without one
    big = os.urandom(10 * 2**20 + 1000)
    r = client.post("/v1/analyze", files=[("image", ("big.jpg", big, "image/jpeg"))])
    assert one_line_error(r, 413, "10 MB")["kind"] == "too_large"

    def chunks():
        for _ in range(11):
            yield big[: 2**20]

    r = httpx.post(f"{service['url']}/v1/analyze", content=chunks(), headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=x"}, timeout=60)
    one_line_error(r, 413)
    # what the metrics below count besides: a refused key and a masked face (no other test needed)
    one_line_error(httpx.get(f"{service['url']}/v1/galleries/x"), 401, "API key")
    assert client.post("/v1/analyze", files=files(image=masked_t1)).status_code == 200
    metrics = client.get("/metrics").text
    for line in ('bfm_requests_total{endpoint="/v1/analyze",method="POST",status="200"}',
                 'bfm_errors_total{kind="too_large"}', 'bfm_errors_total{kind="no_face"}',
                 'bfm_errors_total{kind="unauthorized"}', 'bfm_request_seconds_bucket{endpoint="/v1/analyze"',
                 "bfm_masked_share ", 'bfm_faces_total{masked="true"}', "bfm_requests_in_flight "):
        assert line in metrics, line
    assert service["proc"].poll() is None  # still serving after every bad request


def test_the_guide_runs_as_written(service, t1, shared):
    """docs/guides/serve.md: every curl block as written, against the guide's own server."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    raw, work = shared("data", "lfw_raw"), service["work"]
    for name, src in (("t1.jpg", t1), ("ann.jpg", raw / "Ann_Veneman" / "Ann_Veneman_0001.jpg"),
                      ("ann2.jpg", raw / "Ann_Veneman" / "Ann_Veneman_0002.jpg"),
                      ("bill.jpg", raw / "Bill_Sizemore" / "Bill_Sizemore_0001.jpg")):
        shutil.copy(src, work / name)
    script = "set -euo pipefail\n" + "\n".join(service["blocks"][1:]).replace("http://127.0.0.1:8000",
                                                                              service["url"])
    r = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=180,
                       env={**os.environ, **service["env"]})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.replace(" ", "")
    assert '"identity":"Ann_Veneman"' in out and '"error"' not in out, r.stdout
    assert '"case":1' in out and "bfm_requests_total" in out, r.stdout
    labelled = cv2.imread(str(work / "t1_labelled.jpg"))
    assert labelled is not None and labelled.shape == cv2.imread(str(t1)).shape


def test_sigterm_drains_requests_in_flight(service, t1):
    """Last in this file: it stops the module's server. Requests in flight at SIGTERM are all
    answered, then the process exits 0 and the port is closed."""
    proc, url = service["proc"], service["url"]
    headers = {"Authorization": f"Bearer {KEY}"}
    before = _answered(httpx.get(f"{url}/metrics", headers=headers).text)
    n = 4
    answers = []

    def call():
        try:
            r = httpx.post(f"{url}/v1/analyze", files=files(image=t1), headers=headers, timeout=120)
            answers.append((r.status_code, len(r.json()["faces"])))
        except Exception as e:  # noqa: BLE001 - recorded, the assertion below names it
            answers.append(repr(e))

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        # SIGTERM once all n requests are inside the service (in flight, or already answered)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = httpx.get(f"{url}/metrics", headers=headers).text
            flying = float(re.search(r"^bfm_requests_in_flight (\S+)", text, re.M).group(1))
            if flying + _answered(text) - before >= n:
                break
            time.sleep(0.02)
        assert flying >= 1, "the requests were answered before SIGTERM could be sent: nothing to drain"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, service["log"].read_text()
    finally:
        stop(proc)
        for t in threads:
            t.join(timeout=60)
    assert answers == [(200, 6)] * n, answers
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)
    assert "Shutting down" in service["log"].read_text()


def test_workers_share_one_port_and_stop_cleanly(pack, tmp_path):
    """--workers 2: two processes answer on one port; SIGTERM stops both, the command exits 0."""
    proc, url = start_server(["serve", "--pack", pack, "--port", "0", "--workers", "2", "--gallery-dir",
                              tmp_path / "g"], tmp_path / "serve.log")
    try:
        pids, deadline = set(), time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(httpx.get(f"{url}/healthz", timeout=10).json()["pid"])
        assert len(pids) == 2 and proc.pid not in pids, pids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        stop(proc)


def _answered(metrics_text) -> float:
    found = re.search(r'^bfm_requests_total\{endpoint="/v1/analyze",method="POST",status="200"\} (\S+)',
                      metrics_text, re.M)
    return float(found.group(1)) if found else 0.0
