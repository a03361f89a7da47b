"""`bfm serve` under load against FaceAnalysis.get in-process, and video against photos.

1. Throughput: the same photos through ``decode_image + FaceAnalysis.get`` in this process (the
   baseline), then as ``POST /v1/analyze`` to a real ``bfm serve`` on 127.0.0.1 by 1, 4 and 16
   concurrent clients (httpx, one connection each). Requests/s, p50/p99 latency, and the ratio of
   each to the baseline (target: >= 0.85x at 4 clients on 2 cores).
2. Robustness: ``--mixed`` requests (default 2,000) from 4 clients, analyse / search / enrol mixed,
   5% of them bad (corrupt bytes, no face, a missing field, an upload over the limit): counts 5xx
   (target 0), checks that the gallery holds exactly the entries the enrol answers reported (no
   lost enrolment), and samples the server's RSS (target: flat within 10% after warm-up).
3. Video: frames/s of ``analyze_video`` (what ``bfm analyze VIDEO`` runs) on a clip made from two
   LFW photos, against ``analyze_images`` (what ``bfm analyze DIR`` runs) on the same frames saved
   as JPEG files.

    python benchmarks/serve_load.py                 # test-style pack built from ../shared models
    python benchmarks/serve_load.py --pack DIR --requests 200 --mixed 2000

Without --pack, a temporary pack is built from ../shared/models (SCRFD-2.5G, MobileFaceNet as E_F
and, negated, E_P, the "darkness" stand-in classifier of the tests). Timings on a shared machine are
noisy: read the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def build_pack(workdir: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from bfm_inference_helpers import make_export

    from insightface_bfm.zoo.packs import build_pack as build

    export = make_export(workdir / "export", SHARED / "models" / "mobilefacenet_128.onnx")
    return build(export, workdir / "pack", detector=SHARED / "models" / "scrfd_2.5g_bnkps.onnx",
                 verification_distance=1.2, verification_distance_partial=1.3).path


def start_server(pack: Path, work: Path):
    log = work / "serve.log"
    code = ("from insightface_bfm.cli import main\n"
            f"main(args=['serve', '--pack', {str(pack)!r}, '--port', '0', '--gallery-dir', "
            f"{str(work / 'galleries')!r}], prog_name='bfm')\n")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, cwd=work)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"at (http://127\.0\.0\.1:\d+) ", log.read_text(errors="replace"))
        if found:
            try:
                if httpx.get(found.group(1) + "/healthz", timeout=5).status_code == 200:
                    return proc, found.group(1)
            except httpx.TransportError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"bfm serve did not start:\n{log.read_text()}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def photos(n: int) -> list[tuple[str, bytes]]:
    """``n`` raw LFW photos (one person each, first photo), as encoded bytes."""
    people = sorted(d for d in (SHARED / "data" / "lfw_raw").iterdir() if d.is_dir())
    chosen = [sorted(d.glob("*.jpg"))[0] for d in people[:n]]
    return [(p.name, p.read_bytes()) for p in chosen]


def in_process(app, images, requests: int) -> dict:
    from insightface_bfm.imaging import decode_image

    latencies = []
    started = time.perf_counter()
    for i in range(requests):
        name, data = images[i % len(images)]
        t = time.perf_counter()
        app.get(decode_image(data, name))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return {"req_s": requests / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99)}


def run_clients(url, requests: int, clients: int, send) -> float:
    """``clients`` threads, each with its own HTTP client, share the request numbers 0..requests-1 and
    call ``send(http, i)`` for each (it returns the client to go on with: a new one after a dropped
    connection). Returns the wall seconds."""
    import httpx

    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        http = httpx.Client(base_url=url, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                http.close()
                return
            http = send(http, i)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return time.perf_counter() - started


def over_http(url, images, requests: int, clients: int) -> dict:
    latencies, statuses = [], []
    lock = threading.Lock()

    def send(http, i):
        name, data = images[i % len(images)]
        t = time.perf_counter()
        r = http.post("/v1/analyze", files={"image": (name, data, "image/jpeg")})
        with lock:
            latencies.append(time.perf_counter() - t)
            statuses.append(r.status_code)
        return http

    wall = run_clients(url, requests, clients, send)
    return {"req_s": requests / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99), "non_200": sum(s != 200 for s in statuses)}


def mixed(url, pid, images, total: int, clients: int, bad_share: float, seed: int = 0) -> dict:
    """``total`` requests: analyse 60%, search 20%, enrol 20% (each enrol a new aligned crop), with a
    share of bad ones. Returns counts by status, enrolments answered and the gallery's size."""
    import httpx

    rng = random.Random(seed)
    crops = sorted((SHARED / "data" / "lfw112").rglob("*.jpg"))
    blank = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
    big = os.urandom(11 * 2**20)
    plan = []
    for _ in range(total):
        if rng.random() < bad_share:
            plan.append(("bad", rng.choice(["corrupt", "no_face", "missing_field", "too_large"])))
        else:
            plan.append((rng.choices(["analyze", "search", "enrol"], weights=[60, 20, 20])[0], None))
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    state = {"enrolled": 0, "enrol_ok": 0, "rss": [], "done": 0, "crop": 0}
    # one entry to search from the start
    with httpx.Client(base_url=url, timeout=120) as http:
        first = crops[0]
        r = http.post("/v1/galleries/load/identities", params={"aligned": 1},
                      data={"identity": first.parent.name},
                      files={"images": (first.name, first.read_bytes(), "image/jpeg")})
        state["enrolled"] += r.json()["enrolled"]
        state["crop"] = 1

    def one(http, kind, detail):
        if kind == "analyze":
            name, data = images[rng.randrange(len(images))]
            return http.post("/v1/analyze", files={"image": (name, data, "image/jpeg")})
        if kind == "search":
            name, data = images[rng.randrange(len(images))]
            return http.post("/v1/galleries/load/search", files={"image": (name, data, "image/jpeg")})
        if kind == "enrol":
            with lock:
                crop = crops[state["crop"] % len(crops)]
                state["crop"] += 1
            return http.post("/v1/galleries/load/identities", params={"aligned": 1},
                             data={"identity": crop.parent.name},
                             files={"images": (crop.name, crop.read_bytes(), "image/jpeg")})
        if detail == "corrupt":
            return http.post("/v1/analyze", files={"image": ("x.jpg", b"not an image", "image/jpeg")})
        if detail == "no_face":
            return http.post("/v1/galleries/load/identities", data={"identity": "nobody"},
                             files={"images": ("blank.png", blank, "image/png")})
        if detail == "missing_field":
            return http.post("/v1/compare", files={"image_a": ("blank.png", blank, "image/png")})
        return http.post("/v1/analyze", files={"image": ("big.jpg", big, "image/jpeg")})

    def send(http, i):
        kind, detail = plan[i]
        try:
            r = one(http, kind, detail)
            status = r.status_code
        except httpx.TransportError:
            status = -1  # a dropped connection (after a 413 the server closes it): counted
            http = httpx.Client(base_url=url, timeout=120)
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            if kind == "enrol" and status == 200:
                state["enrol_ok"] += 1
                state["enrolled"] += r.json()["enrolled"]
            state["done"] += 1
            if state["done"] % 100 == 0:
                state["rss"].append(rss_mb(pid))
        return http

    wall = run_clients(url, total, clients, send)
    with httpx.Client(base_url=url, timeout=60) as http:
        entries = http.get("/v1/galleries/load").json()["entries"]
    rss = state["rss"]
    warm = rss[len(rss) // 5:] if len(rss) >= 5 else rss  # after the first fifth: warmed up
    return {"requests": total, "seconds": wall, "statuses": dict(sorted(statuses.items())),
            "server_errors": sum(v for k, v in statuses.items() if k >= 500 or k < 0),
            "enrolled_answers": state["enrolled"], "gallery_entries": entries,
            "lost_enrolments": state["enrolled"] - entries,
            "rss_mb_first_last_max": [round(v, 1) for v in (warm[0], warm[-1], max(warm))] if warm else [],
            "rss_growth": (max(warm) / warm[0] - 1) if warm else float("nan")}


def video_vs_photos(app, work: Path, frames: int) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from bfm_inference_helpers import make_clip

    from insightface_bfm.recognition.analyze import analyze_images
    from insightface_bfm.recognition.video import analyze_video

    raw = SHARED / "data" / "lfw_raw"
    clip = make_clip(work / "clip.mp4", raw / "Amanda_Bynes" / "Amanda_Bynes_0001.jpg",
                     raw / "Bill_Sizemore" / "Bill_Sizemore_0001.jpg", app, frames=frames,
                     mask_from=frames // 2)
    folder = work / "frames"
    folder.mkdir()
    cap = cv2.VideoCapture(str(clip))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        i += 1
    cap.release()
    results = {}
    for _ in range(2):  # alternate, so load on a shared machine hits both alike
        t = time.perf_counter()
        run = analyze_video(app, clip, progress=False)
        results.setdefault("video", []).append(run.frames / (time.perf_counter() - t))
        t = time.perf_counter()
        photos_run = analyze_images(app, [folder], progress=False)
        results.setdefault("images", []).append(photos_run.images / (time.perf_counter() - t))
    video, images = max(results["video"]), max(results["images"])
    return {"frames": i, "video_frames_s": video, "images_per_s": images, "ratio": video / images,
            "tracks": len(run.tracks)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", help="pack folder (default: a test-style pack built from ../shared)")
    parser.add_argument("--requests", type=int, default=120, help="requests per concurrency level")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--mixed", type=int, default=2000, help="requests of the robustness run")
    parser.add_argument("--bad-share", type=float, default=0.05, help="share of bad requests in it")
    parser.add_argument("--video-frames", type=int, default=40, help="frames of the video clip")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve_load."))
    try:
        pack = Path(args.pack) if args.pack else build_pack(work)
        from insightface_bfm.recognition.analyze import open_app

        app = open_app(str(pack))
        images = photos(40)
        in_process(app, images, 10)  # warm-up (sessions, per-size detector sessions)
        results = {"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                   "cpus": os.cpu_count(), "pack": str(pack)}
        proc, url = start_server(pack, work)
        try:
            over_http(url, images, 10, 1)  # warm-up
            levels = {}
            for clients in [int(c) for c in args.clients.split(",")]:
                base = in_process(app, images, args.requests)  # measured next to each level
                http = over_http(url, images, args.requests, clients)
                levels[clients] = {"in_process": base, "service": http,
                                   "throughput_ratio": http["req_s"] / base["req_s"],
                                   "p50_ratio": http["p50_ms"] / base["p50_ms"]}
                print(f"{clients:>2} clients: service {http['req_s']:.1f} req/s "
                      f"(p50 {http['p50_ms']:.0f} ms, "
                      f"p99 {http['p99_ms']:.0f} ms), in-process {base['req_s']:.1f} req/s (p50 "
                      f"{base['p50_ms']:.0f} ms, p99 {base['p99_ms']:.0f} ms): "
                      f"{levels[clients]['throughput_ratio']:.2f}x", flush=True)
            results["levels"] = levels
            robust = mixed(url, proc.pid, images, args.mixed, 4, args.bad_share)
            results["mixed"] = robust
            print(f"mixed: {robust['requests']} requests in {robust['seconds']:.0f} s, statuses "
                  f"{robust['statuses']}, 5xx/dropped {robust['server_errors']}, enrolled "
                  f"{robust['enrolled_answers']} = gallery {robust['gallery_entries']} (lost "
                  f"{robust['lost_enrolments']}), RSS MB first/last/max after warm-up "
                  f"{robust['rss_mb_first_last_max']} (+{100 * robust['rss_growth']:.1f}%)", flush=True)
        finally:
            proc.terminate()
            results["server_exit"] = proc.wait(timeout=60)
        video = video_vs_photos(app, work, args.video_frames)
        results["video"] = video
        print(f"video: {video['frames']} frames, analyze_video {video['video_frames_s']:.2f} frames/s vs "
              f"analyze_images on the same frames {video['images_per_s']:.2f} images/s: "
              f"{video['ratio']:.2f}x ({video['tracks']} tracks)")
        print(f"server exit status after SIGTERM: {results['server_exit']}; {results['uptime']}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
