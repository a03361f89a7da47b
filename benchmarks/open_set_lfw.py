"""Open-set (1:N) search on LFW DevTest people, at the pack's open-set thresholds against its 1:1 one.

Issue 31's measurement. The pack's ``thresholds.search_*`` were chosen on its build's held-out
DevTrain identities (``bfm models build`` at its end, or ``bfm models calibrate``); nothing is
tuned here. On DevTest people (never trained on):

- a gallery of ``--enrolled`` people (one bare face each; those with a second face first), searched
  with up to 10 other faces of each (mated) and every face of ``--strangers`` never-enrolled people,
  bare, with our drawn masks (medical, respirator, fabric families) and with the photographed family;
  FPIR (strangers named) and FNIR (enrolled people missed) per probe type at the pack's open-set
  thresholds (as stored, for its calibration's gallery size, and as a search sets them for this
  gallery's size) and at its 1:1 verification thresholds, measured in the same run, and their
  ratios; the DET plot (``det.png``);
- insightface's t1.jpg (six people, none in LFW) searched in a gallery of ``--t1-gallery`` LFW
  DevTest people with ``bfm gallery``'s library functions: how many of the six are named.

    python benchmarks/open_set_lfw.py PACK --lfw ../shared/data/lfw112 \\
        --people ../shared/data/lfw112/peopleDevTest.txt --out runs/open_set_lfw
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from insightface_bfm.evaluation.open_set import (
    DRAWN_MASKS,
    evaluate_open_set,
    markdown_report,
    write_open_set_report,
)
from insightface_bfm.zoo.build import read_people


def t1_search(pack: str, lfw: Path, people: list[str], n: int, work: Path) -> dict:
    """t1.jpg's faces against an ``n``-person gallery: named faces at the open-set thresholds (set for
    this gallery's size, as ``bfm gallery search`` sets them) and at the 1:1 threshold."""
    import insightface

    from insightface_bfm import FaceAnalysis
    from insightface_bfm.imaging import read_image
    from insightface_bfm.recognition.gallery import enrol_folder, open_gallery

    t1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    folder = work / "t1_gallery"
    folder.mkdir()
    for name in sorted(people)[:n]:
        (folder / name).mkdir()
        first = sorted((lfw / name).iterdir())[0].resolve()
        os.symlink(first, folder / name / first.name)
    app = FaceAnalysis(name=pack, providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    enrol_folder(app, work / "t1.npz", folder, aligned=True, progress=False)
    gallery = open_gallery(work / "t1.npz", app)
    faces = app.get(read_image(t1), embed="both")
    out = {"faces": len(faces), "gallery": len(gallery)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thresholds = {"open-set": app.search_thresholds(gallery_size=len(gallery)),
                      "1:1": app.verification_thresholds()}
    for label, th in thresholds.items():
        found = [gallery.identify(f, th, k=1) for f in faces]
        out[label] = {"named": sum(f.identity is not None for f in found),
                      "names": [f.identity for f in found if f.identity is not None],
                      "best_similarities": [round(f.candidates[0].similarity, 3) for f in found]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pack", help="BFM pack folder with open-set thresholds (bfm models calibrate)")
    ap.add_argument("--lfw", default="../shared/data/lfw112", help="LFW aligned 112x112 crops")
    ap.add_argument("--people", default="../shared/data/lfw112/peopleDevTest.txt",
                    help="people never trained on")
    ap.add_argument("--enrolled", type=int, default=500)
    ap.add_argument("--strangers", type=int, default=500)
    ap.add_argument("--t1-gallery", type=int, default=30)
    ap.add_argument("--cache", help="embedding cache folder")
    ap.add_argument("--out", default="runs/open_set_lfw", help="open_set.json, open_set.md, det.png, t1.json")
    args = ap.parse_args(argv)

    lfw = Path(args.lfw)
    people = read_people(args.people)
    t0 = time.time()
    results, scores = evaluate_open_set(
        args.pack, lfw, people=people, enrolled=args.enrolled, strangers=args.strangers,
        probe_masks={"masked": DRAWN_MASKS, "photo": ("photo",)}, cache_dir=args.cache, progress=False)
    paths = write_open_set_report(args.out, results, scores)
    print(f"LFW DevTest: gallery of {results['enrolled'][0]} people, {results['searches']['enrolled']} "
          f"searches by enrolled people and {results['searches']['strangers']} by {results['strangers'][0]} "
          f"never-enrolled people (probe types bare, masked = our drawn masks, photo = the photographed "
          f"family); "
          f"{time.time() - t0:.0f} s")
    print(markdown_report(results), end="")
    one = "1:1 verification"
    for label in [x for x in results["at"] if x.startswith("open-set")]:
        if one not in results["at"]:
            break
        at_s, at_1 = results["at"][label]["rates"], results["at"][one]["rates"]
        for ptype in at_s:
            fp_s, fp_1 = at_s[ptype]["fpir"], at_1[ptype]["fpir"]
            ratio = "inf" if fp_s == 0 else f"{fp_1 / fp_s:.1f}x"
            print(f"{label}, {ptype}: FPIR at 1:1 / open-set thresholds = {100 * fp_1:.2f}% / "
                  f"{100 * fp_s:.2f}% "
                  f"({ratio}); FNIR {100 * at_1[ptype]['fnir']:.2f}% / {100 * at_s[ptype]['fnir']:.2f}%")
    with tempfile.TemporaryDirectory() as tmp:
        t1 = t1_search(args.pack, lfw, people, args.t1_gallery, Path(tmp))
    print(f"t1.jpg: {t1['faces']} faces against a {t1['gallery']}-person LFW gallery: named "
          f"{t1['open-set']['named']} at the open-set thresholds, {t1['1:1']['named']} at the 1:1 threshold "
          f"(best similarities {t1['open-set']['best_similarities']})")
    (Path(args.out) / "t1.json").write_text(json.dumps(t1, indent=1) + "\n")
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f", {Path(args.out) / 't1.json'}")
    return results, t1


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
