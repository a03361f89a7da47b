"""Evaluation output: ``results.json``, a Markdown table (``results.md``) and a ROC plot (``roc.png``).

The plot is drawn with OpenCV (already a dependency) rather than matplotlib: TAR against FAR on a
log FAR axis from 1e-4 to 1, the usual face-verification view.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import BFMError


def _pct(x, std=None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def markdown_table(results: list[dict]) -> str:
    """One row per evaluated (set, model); a per-case table below where cases were measured."""
    lines = [
        "| set | model | pairs | accuracy (10-fold) | AUC | EER | TAR@FAR=1e-3 | TAR@FAR=1e-4 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in results:
        set_name = r["set"] + (f" (mask {r['mask_pairs']['mode']}, seed {r['mask_pairs']['seed']})"
                               if r.get("mask_pairs") else "")
        if r.get("threshold_rule") == "per_extractor":
            notes.append(f"{Path(r['model']).name} on {set_name}: accuracies with one threshold per "
                         "extractor (E_F's pairs, E_P's pairs); AUC, EER and TAR@FAR with one moving "
                         "threshold.")
        tars = []
        for far in ("0.001", "0.0001"):
            t = r["tar_at_far"][far]
            tars.append(_pct(t["tar"]) if t["tar"] is not None else "null")
            if t["tar"] is None:
                notes.append(f"TAR@FAR={far} on {set_name}: {t['reason']}.")
        lines.append(
            f"| {set_name} | {Path(r['model']).name} | {r['n_pairs']} | {_pct(r['accuracy'], r['std'])} | "
            f"{r['auc']:.4f} | {_pct(r['eer'])} | {tars[0]} | {tars[1]} |"
        )
    case_rows = []
    for r in results:
        for case, c in sorted((r.get("cases") or {}).items()):
            case_rows.append(
                f"| {r['set']} | {Path(r['model']).name} | {case}: {c['name']} | {r['case_source']} | "
                f"{c['n_pairs']} | {_pct(c['accuracy'])} | "
                f"{_pct(c['accuracy_within_case'], c['std_within_case'])} |"
            )
    text = "\n".join(lines) + "\n"
    if case_rows:
        text += (
            "\n| set | model | case | cases from | pairs | accuracy (set thresholds) "
            "| accuracy (own 10-fold) |\n"
            "|---|---|---|---|---:|---:|---:|\n" + "\n".join(case_rows) + "\n"
        )
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


# plot geometry (pixels)
_W, _H, _L, _R, _T, _B = 640, 480, 70, 20, 40, 55
_FAR_MIN = 1e-4


def _xy(far: np.ndarray, tar: np.ndarray) -> np.ndarray:
    lo = math.log10(_FAR_MIN)
    x = _L + (np.log10(np.clip(far, _FAR_MIN, 1.0)) - lo) / -lo * (_W - _L - _R)
    y = _H - _B - np.asarray(tar) * (_H - _T - _B)
    return np.stack([x, y], axis=1)


def roc_image(curves: list[tuple[str, np.ndarray, np.ndarray]]) -> np.ndarray:
    """A BGR image of ROC curves [(label, far, tar), ...]: log FAR axis, TAR 0..1."""
    img = np.full((_H, _W, 3), 255, np.uint8)
    grey, black, font = (210, 210, 210), (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    for e in range(-4, 1):  # decades
        (x, _), = _xy(np.array([10.0**e]), np.array([0.0]))
        cv2.line(img, (int(x), _T), (int(x), _H - _B), grey, 1)
        label = f"1e{e}" if e else "1"
        cv2.putText(img, label, (int(x) - 14, _H - _B + 18), font, 0.4, black, 1, cv2.LINE_AA)
    for t in np.linspace(0, 1, 6):
        y = int(_H - _B - t * (_H - _T - _B))
        cv2.line(img, (_L, y), (_W - _R, y), grey, 1)
        cv2.putText(img, f"{t:.1f}", (_L - 32, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (_L, _T), (_W - _R, _H - _B), black, 1)
    xlabel = "FAR (false accept rate, log scale)"
    cv2.putText(img, xlabel, (_L + 140, _H - 12), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(img, "TAR", (8, _T + (_H - _T - _B) // 2), font, 0.45, black, 1, cv2.LINE_AA)
    colors = [(200, 80, 0), (0, 0, 200), (0, 150, 0), (150, 0, 150), (0, 140, 220), (90, 90, 90)]
    for i, (label, far, tar) in enumerate(curves):
        color = colors[i % len(colors)]
        far, tar = np.asarray(far, float), np.asarray(tar, float)
        keep = far >= _FAR_MIN
        # start the visible part at the left edge with the TAR reached there
        if keep.any() and not keep.all():
            first = int(np.argmax(keep))
            far = np.r_[_FAR_MIN, far[first:]]
            tar = np.r_[tar[first - 1], tar[first:]]
        pts = np.round(_xy(far, tar)).astype(np.int32)
        # a step ROC: hold TAR until FAR moves on
        steps = np.empty((2 * len(pts) - 1, 2), np.int32)
        steps[0::2] = pts
        steps[1::2, 0] = pts[1:, 0]
        steps[1::2, 1] = pts[:-1, 1]
        cv2.polylines(img, [steps.reshape(-1, 1, 2)], False, color, 2, cv2.LINE_AA)
        ly = _H - _B - 12 - 18 * (len(curves) - 1 - i)
        cv2.line(img, (_W - _R - 250, ly - 4), (_W - _R - 225, ly - 4), color, 2)
        cv2.putText(img, label[:40], (_W - _R - 220, ly), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(img, "ROC", (_L, _T - 14), font, 0.6, black, 1, cv2.LINE_AA)
    return img


def write_report(out_dir, results: dict, verification, manifest=None) -> dict:
    """Write results.json, results.md, roc.png (and mask_manifest.json) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "roc": out / "roc.png"}
    atomic_write_text(paths["json"], json.dumps(results, indent=1) + "\n")
    atomic_write_text(paths["markdown"], markdown_table([results]))
    far, tar = verification.roc
    label = f"{Path(results['model']).name} AUC {results['auc']:.4f}"
    ok, png = cv2.imencode(".png", roc_image([(label, far, tar)]))
    if not ok:
        raise BFMError(f"{paths['roc']}: could not encode the ROC plot")
    atomic_write_bytes(paths["roc"], png.tobytes())
    if manifest is not None:
        from .masked_pairs import save_manifest

        paths["manifest"] = out / "mask_manifest.json"
        save_manifest(paths["manifest"], manifest)
    return paths
