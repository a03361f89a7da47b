"""``bfm align`` and ``bfm eval``: thin click layers over ``data.align`` and ``evaluation.evaluate``."""

from __future__ import annotations

import click

from ..data.align import POLICIES
from .verification import THRESHOLD_RULES


@click.command("align")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--detector", type=click.Path(exists=True, dir_okay=False), help="SCRFD detector ONNX file.")
@click.option("--det-pack", help="insightface pack whose detector to use (e.g. buffalo_l), under --root.")
@click.option("--root", help="Model root for --det-pack (default $INSIGHTFACE_BFM_ROOT or ~/.insightface).")
@click.option("--policy", type=click.Choice(POLICIES), default="largest", show_default=True,
              help="Which face to keep when a photo holds several.")
@click.option("--det-size", type=int, default=640, show_default=True, help="Detector input size.")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Detection score threshold.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def align(src, dst, detector, det_pack, root, policy, det_size, threshold, quiet):
    """Detect and align the photos of SRC to 112x112 crops in DST (same layout; resumable).

    SRC: a folder, one image file or - (image paths on stdin). One run at a time per DST.
    Photos without a face are listed in DST/misses.txt and retried on the next run.
    """
    from ..data.align import align_folder, load_detector

    model = load_detector(detector, det_pack, root=root, det_size=det_size, threshold=threshold)
    summary = align_folder(src, dst, model, policy=policy, progress=not quiet)
    click.echo(f"{dst}: {summary}" + (f" (see {dst}/misses.txt)" if summary.misses else ""))


@click.command("eval")
@click.argument("pairs", type=click.Path(exists=True))
@click.option("--model", "model", required=True,
              help="insightface recognition .onnx, BFM pack (folder or name under --root), or training "
                   "checkpoint.")
@click.option("--root", help="Model root for pack names (default $INSIGHTFACE_BFM_ROOT or ~/.insightface).")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Folder of aligned crops the pairs refer to (default: the pairs file's folder).")
@click.option("--format", "fmt", type=click.Choice(["auto", "lfw", "mfr2", "csv", "bin"]), default="auto",
              show_default=True, help="Pairs format; auto: .bin, .csv, else LFW/MFR2 lines.")
@click.option("--flip/--no-flip", default=False, show_default=True,
              help="Add the embedding of the mirrored crop (arcface_torch's test-time flip).")
@click.option("--mask-pairs", type=click.Choice(["one", "both"]),
              help="Put synthetic masks on the second face (one) or both faces (both) of every pair.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic masks.")
@click.option("--mask-types", help="Comma-separated mask types or families to draw from (default: all of "
              "surgical,n95,kn95,cloth,dark; families medical, respirator, fabric).")
@click.option("--mask-manifest", type=click.Path(exists=True, dir_okay=False),
              help="Rebuild the masked set saved in this manifest (from an earlier --out).")
@click.option("--cases", type=click.Choice(["auto", "classifier", "labels", "none"]), default="auto",
              show_default=True, help="Where the matching case of each pair comes from.")
@click.option("--folds", type=int, default=10, show_default=True,
              help="Folds when the pairs file defines none.")
@click.option("--mask-threshold", type=float, help="Classifier score above which a face counts as masked.")
@click.option("--thresholds", "threshold_rule", type=click.Choice(THRESHOLD_RULES), default="one",
              show_default=True,
              help="Verification thresholds of a BFM model: one for every pair (the paper), or one per "
                   "extractor (E_F's pairs and E_P's pairs each their own, as a pack built with them "
                   "decides).")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Faces per forward pass while embedding.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Keep embeddings here per model, so reruns skip the network.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write results.json, results.md, roc.png (and mask_manifest.json) here.")
@click.option("--open-set", "open_set", is_flag=True,
              help="1:N instead: PAIRS is a folder of aligned faces (one sub-folder per identity); report "
                   "FPIR and FNIR per probe type at the pack's open-set and 1:1 thresholds, and a DET curve "
                   "(det.png).")
@click.option("--people", type=click.Path(exists=True, dir_okay=False),
              help="--open-set: use only these identities (one name per line, or LFW's people-list "
                   "format).")
@click.option("--enrolled", type=click.IntRange(min=1),
              help="--open-set: enrol this many identities (those with 2+ faces first) in one gallery "
                   "(default: two folds, each half enrolled in turn).")
@click.option("--strangers", type=click.IntRange(min=1),
              help="--open-set with --enrolled: search this many never-enrolled identities (default: all "
                   "others).")
@click.option("--probe-mask", "probe_masks", multiple=True, metavar="NAME=TYPES",
              help="--open-set: a masked probe type, e.g. photo=photographed (mask types or families, "
                   "comma-separated); repeatable. Default: masked=all mask types.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(pairs, model, root, images, fmt, flip, mask_pairs, seed, mask_types, mask_manifest, cases, folds,
             mask_threshold, threshold_rule, batch_size, cache_dir, out_dir, open_set, people, enrolled,
             strangers, probe_masks, quiet):
    """Verification accuracy of MODEL on PAIRS (LFW pairs.txt, MFR2 pairs, CSV or insightface .bin):
    10-fold accuracy, ROC AUC, EER, TAR@FAR and accuracy per matching case.

    With --open-set, the 1:N report of a BFM pack on a face folder: FPIR (strangers named) and FNIR
    (enrolled people missed) per probe type, bare and masked, and the DET curve."""
    import os

    from .report import markdown_table, write_report
    from .run import evaluate as run

    if open_set:
        _open_set(pairs, model, root, seed, cache_dir, out_dir, people, enrolled, strangers, probe_masks,
                  quiet)
        return
    if os.path.isdir(pairs):
        raise click.BadParameter(f"{pairs} is a folder: give a pairs file, or --open-set for a face folder",
                                 param_hint="PAIRS")

    if mask_pairs and mask_manifest:
        raise click.UsageError("give --mask-pairs or --mask-manifest, not both")
    types = [t.strip() for t in mask_types.split(",")] if mask_types else None
    results, verification, manifest = run(
        pairs, model, images=images, fmt=fmt, flip=flip, mask_pairs=mask_pairs, seed=seed, mask_types=types,
        mask_manifest=mask_manifest, cases=cases, n_folds=folds, batch_size=batch_size,
        cache_dir=cache_dir, mask_threshold=mask_threshold, progress=not quiet, root=root,
        thresholds=threshold_rule,
    )
    click.echo(markdown_table([results]), nl=False)
    if out_dir:
        paths = write_report(out_dir, results, verification, manifest)
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _open_set(faces, model, root, seed, cache_dir, out_dir, people, enrolled, strangers, probe_masks, quiet):
    """``bfm eval --open-set``: parse, then ``open_set.evaluate_open_set``."""
    import os

    from ..zoo.build import read_people
    from .open_set import evaluate_open_set, markdown_report, write_open_set_report

    if not os.path.isdir(faces):
        raise click.BadParameter(f"{faces}: --open-set takes a folder of faces", param_hint="PAIRS")
    if strangers is not None and enrolled is None:
        raise click.UsageError("--strangers needs --enrolled")
    masks = {}
    for spec in probe_masks:
        name, sep, types = spec.partition("=")
        if not sep or not name or not types or name == "bare":
            raise click.BadParameter(f"{spec!r}: expected NAME=TYPES, e.g. photo=photographed",
                                     param_hint="--probe-mask")
        masks[name] = tuple(t.strip() for t in types.split(","))
    results, scores = evaluate_open_set(
        model, faces, people=read_people(people) if people else None, enrolled=enrolled, strangers=strangers,
        probe_masks=masks or None, seed=seed, cache_dir=cache_dir, progress=not quiet, root=root)
    click.echo(markdown_report(results), nl=False)
    if out_dir:
        paths = write_open_set_report(out_dir, results, scores)
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
