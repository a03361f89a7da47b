"""Are our synthetic masks real enough? Train on them, test on real masked photos.

``insightface_bfm.nets.MaskClassifier`` (the paper's Table I classifier) is trained only on LFW
crops (``../shared/data/lfw112``, people of LFW's DevTrain split): each crop once bare
(class 0) and once with a fresh synthetic mask from ``render_mask`` (class 1), at the crop's own
5 points. Then it is measured on

* synthetic held-out: crops of the DevTest people (disjoint identities), bare and masked;
* real masks: the photos of ``../shared/data/rmfd_dev`` (RMFD), detected with SCRFD and aligned
  with ``face_align.norm_crop``: recall = share of faces called masked.

Runs on 2 CPU threads in a few minutes:

    python benchmarks/mask_realism.py [--train 3000] [--epochs 3] [--json out.json]
    python benchmarks/mask_realism.py --trainer-masks 4 --worn-low 0   # C as the trainer trains it

The second form trains C the way ``bfm-train`` does in the real-faces recipe (the batched
``MaskAugment`` at the template with ``data.mask_kps_jitter``, SGD): it is how that recipe's
jitter was chosen, so RMFD here is a development set (rmfd_dev), not a held-out test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from insightface_bfm.atomic import atomic_write_text
from insightface_bfm.imaging import ARCFACE_KPS, to_network_input
from insightface_bfm.masks import random_style, render_mask

SHARED = Path(__file__).resolve().parents[2] / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mask_coverage import crop_points  # noqa: E402


def people(root: Path, split_file: str) -> list[str]:
    lines = (root / split_file).read_text().split("\n")[1:]
    return [ln.split("\t")[0] for ln in lines if ln.strip()]


def lfw_split(root: Path, n: int, split_file: str, rng) -> list[str]:
    names = []
    for person in people(root, split_file):
        names.extend(sorted(p.relative_to(root).as_posix() for p in (root / person).glob("*.jpg")))
    idx = rng.choice(len(names), size=min(n, len(names)), replace=False)
    return [names[i] for i in sorted(idx)]


def photo_jitter(img: np.ndarray, rng) -> np.ndarray:
    """Generic photo variation (not fitted to any test set): exposure, colour, low
    resolution, blur, JPEG, flip."""
    out = img.astype(np.float32) * rng.uniform(0.7, 1.25) + rng.uniform(-20, 20)
    img = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.1:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        s = rng.uniform(0.15, 0.8)
        small = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if rng.random() < 0.5:
        img = img[:, ::-1].copy()
    return img


def make_pairs(crops, points, rng, jitter: bool, worn_low: float = 0.0):
    """(images, labels): every crop bare and masked (a fresh style each call)."""
    images, labels = [], []
    for img, kps in zip(crops, points):
        kps = kps + rng.normal(0, 1.0, kps.shape) if jitter else kps
        masked, _ = render_mask(img, np.clip(kps, 0, 111), random_style(rng, worn_low=worn_low))
        for x, y in ((img, 0), (masked, 1)):
            images.append(photo_jitter(x, rng) if jitter else x)
            labels.append(y)
    return np.stack(images), np.array(labels)


def real_masked_crops(rmfd: Path, detector_path: Path, det_size: int):
    """Aligned crops of the most prominent face in each RMFD photo (and how many had none)."""
    from insightface.model_zoo import get_model

    from insightface_bfm.imaging import norm_crop

    det = get_model(str(detector_path))
    det.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=0.3)
    crops, missed = [], 0
    files = sorted(rmfd.rglob("*.jpg")) + sorted(rmfd.rglob("*.png"))
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            missed += 1
            continue
        bboxes, kpss = det.detect(img, max_num=0)
        if bboxes is None or len(bboxes) == 0:
            missed += 1
            continue
        k = int(np.argmax((bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])))
        crops.append(norm_crop(img, kpss[k]))
    return np.stack(crops), len(files), missed


def predict(model, images, torch, batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(to_network_input(images[i:i + batch]))
            out.append(model(x).argmax(1).numpy())
    return np.concatenate(out)


def train_per_image(model, train, train_pts, rng, epochs, worn_low, log, torch):
    """C on the per-image renderer at each crop's own points, with photo jitter (Adam, fresh masks
    each epoch)."""
    t0 = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        x, y = make_pairs(train, train_pts, rng, jitter=True, worn_low=worn_low)  # fresh masks each epoch
        order = rng.permutation(len(x))
        model.train()
        total = 0.0
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            if len(idx) < 2:
                continue
            logits = model(torch.from_numpy(to_network_input(x[idx])))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} ({time.perf_counter() - t0:.0f} s)")


def train_like_trainer(model, train, rng, steps, kps_jitter, worn_low, seed, log, torch):
    """C as ``bfm-train`` trains it in the real-faces recipe: batches of 64 crops, each bare and
    with a mask from the trainer's ``MaskAugment`` (template points, ``kps_jitter``), SGD at lr 1e-2
    (momentum 0.9, weight decay 5e-4), ``steps`` steps."""
    from insightface_bfm.masks.batched import MaskAugment

    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    augment = MaskAugment(kps_jitter=kps_jitter, worn_low=worn_low)
    generator = torch.Generator().manual_seed(seed)
    crops = np.stack(train)
    model.train()
    for step in range(steps):
        batch = rng.choice(len(crops), min(64, len(crops)), replace=False)
        x = torch.from_numpy(to_network_input(crops[batch]))
        masked, _ = augment(x, generator=generator)
        y = torch.cat([torch.zeros(len(x), dtype=torch.long), torch.ones(len(x), dtype=torch.long)])
        loss = torch.nn.functional.cross_entropy(model(torch.cat([x, masked])), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"step {step + 1}/{steps}: loss {float(loss):.4f} ({time.perf_counter() - t0:.0f} s)")


def run(n_train=3000, n_test=1000, epochs=4, det_size=320, seed=0, threads=2, log=print,
        misses_png=None, worn_low=0.1, trainer_masks=None, steps=300) -> dict:
    import torch

    from insightface_bfm.nets import MaskClassifier

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lfw = SHARED / "data" / "lfw112"
    t0 = time.perf_counter()
    train_names = lfw_split(lfw, n_train, "peopleDevTrain.txt", rng)
    test_names = lfw_split(lfw, n_test, "peopleDevTest.txt", rng)
    table = crop_points(lfw, train_names + test_names)
    load = lambda names: [cv2.imread(str(lfw / n)) for n in names]  # noqa: E731
    train, test = load(train_names), load(test_names)
    train_pts = [table.get(n, ARCFACE_KPS) for n in train_names]
    test_pts = [table.get(n, ARCFACE_KPS) for n in test_names]

    model = MaskClassifier()
    if trainer_masks is not None:
        train_like_trainer(model, train, rng, steps, trainer_masks, worn_low, seed, log, torch)
    else:
        train_per_image(model, train, train_pts, rng, epochs, worn_low, log, torch)

    xs, ys = make_pairs(test, test_pts, np.random.default_rng(seed + 1), jitter=False)
    pred = predict(model, xs, torch)
    synthetic = {
        "images": int(len(xs)),
        "accuracy": float((pred == ys).mean()),
        "masked_recall": float((pred[ys == 1] == 1).mean()),
        "unmasked_specificity": float((pred[ys == 0] == 0).mean()),
    }
    crops, photos, missed = real_masked_crops(SHARED / "data" / "rmfd_dev",
                                              SHARED / "models" / "scrfd_2.5g_bnkps.onnx", det_size)
    real_pred = predict(model, crops, torch)
    if misses_png and (real_pred == 0).any():  # a contact sheet of the real masks called bare
        miss = crops[real_pred == 0][:80]
        rows = [np.hstack(list(miss[i:i + 10]) + [np.zeros_like(miss[0])] * (10 - len(miss[i:i + 10])))
                for i in range(0, len(miss), 10)]
        cv2.imwrite(str(misses_png), np.vstack(rows))
    real = {"photos": photos, "faces": int(len(crops)), "no_face": missed,
            "masked_recall": float(real_pred.mean())}
    return {"train_images": 2 * len(train), "epochs": epochs, "worn_low": worn_low,
            "trainer_masks": trainer_masks, "steps": steps if trainer_masks is not None else None,
            "synthetic_heldout": synthetic, "rmfd_real": real, "seconds": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=3000, help="LFW DevTrain crops (each bare + masked)")
    ap.add_argument("--test", type=int, default=1000, help="LFW DevTest crops (each bare + masked)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--det-size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worn-low", type=float, default=0.1,
                    help="share of training masks worn under the nose (people do; 0 = all cover it)")
    ap.add_argument("--trainer-masks", type=float, metavar="JITTER",
                    help="train C as the real-faces recipe does instead: the trainer's batched MaskAugment "
                         "at the template with this data.mask_kps_jitter, SGD lr 1e-2, --steps batches of 64")
    ap.add_argument("--steps", type=int, default=300, help="with --trainer-masks: SGD steps")
    ap.add_argument("--json")
    ap.add_argument("--misses", help="write a contact sheet (PNG) of the real masked faces called bare")
    args = ap.parse_args()
    r = run(args.train, args.test, args.epochs, args.det_size, args.seed, args.threads,
            misses_png=args.misses, worn_low=args.worn_low, trainer_masks=args.trainer_masks,
            steps=args.steps)
    s, q = r["synthetic_heldout"], r["rmfd_real"]
    print(f"synthetic held-out ({s['images']} crops, unseen people): accuracy {s['accuracy']:.2%}, "
          f"masked recall {s['masked_recall']:.2%}, unmasked specificity {s['unmasked_specificity']:.2%}")
    print(f"RMFD real masks: {q['faces']} faces from {q['photos']} photos ({q['no_face']} without a face): "
          f"masked recall {q['masked_recall']:.2%}   [{r['seconds']:.0f} s]")
    if args.json:
        atomic_write_text(args.json, json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
