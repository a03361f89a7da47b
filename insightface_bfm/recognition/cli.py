"""``bfm analyze``, ``bfm compare``, ``bfm gallery``: thin click layers over ``recognition``."""

from __future__ import annotations

import json

import click


def pack_options(f):
    """--pack, --root, --det-size, --aligned: how every photo command finds and sees faces."""
    f = click.option("--aligned", is_flag=True,
                     help="Inputs are 112x112 aligned crops: analyse them as they are, without detection.")(f)
    f = click.option("--det-size", type=int, default=640, show_default=True, help="Detector input size.")(f)
    f = click.option("--root", help="Model root for pack names (default $INSIGHTFACE_BFM_ROOT or "
                                    "~/.insightface).")(f)
    f = click.option("--pack", default="bfm", show_default=True,
                     help="BFM pack: a name under ROOT/models or a folder.")(f)
    return f


def _app(pack, root, det_size):
    from .analyze import open_app

    return open_app(pack, root, det_size)


def _check_threshold(threshold):
    """--threshold outside [0, 4] is refused before any model is loaded."""
    if threshold is not None:
        from ..app import check_distance

        check_distance(threshold, "--threshold")


def _face_row(i, face):
    box = "-" if face["bbox"] is None else "[" + ",".join(f"{v:.0f}" for v in face["bbox"]) + "]"
    det = "-" if face["det_score"] is None else f"{face['det_score']:.2f}"
    masked = "masked" if face["masked"] else "unmasked"
    return f"  {i:>3}  {box:<22} {det:>5}  {masked:<9} {face['mask_score']:.3f}  {face['extractor']}"


@click.command("analyze")
@click.argument("inputs", nargs=-1, metavar="IMAGE_OR_DIR... | VIDEO")
@pack_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write one JSON object per image (JSON lines) to this file; for a video, one per "
                   "analysed frame and a last one summing up the tracks.")
@click.option("--draw", "draw_path", type=click.Path(),
              help="Images: a folder for a picture per image with each face labelled masked/unmasked. "
                   "Video: the labelled video file to write (OUT.mp4).")
@click.option("--embedding", is_flag=True, help="Add each face's normalised embedding to the JSON.")
@click.option("--camera", type=int, metavar="N", help="Analyse camera N (0: the first) instead of files.")
@click.option("--every", type=int, default=1, show_default=True,
              help="Video: analyse every K-th frame (the others are read, not analysed).")
@click.option("--gallery", "gallery_path", type=click.Path(dir_okay=False),
              help="Video: name each track from this gallery (.npz), by vote over its frames.")
@click.option("--threshold", type=float,
              help="Video with --gallery: squared L2 distance above which a face is 'unknown' "
                   "(default: the pack's).")
@click.option("--max-frames", type=int, help="Video: stop after this many frames (a camera never ends).")
@click.option("--quiet", is_flag=True, help="No table, no progress bar.")
def analyze(inputs, pack, root, det_size, aligned, json_path, draw_path, embedding, camera, every,
            gallery_path, threshold, max_frames, quiet):
    """Every face in IMAGE_OR_DIR... (files, folders, - for paths on stdin): box, detection score,
    masked, mask score and extractor. Given a VIDEO file (or --camera N): faces linked into tracks
    over the frames, each track's mask state over time and, with --gallery, its identity."""
    from .video import is_video_file

    videos = [i for i in inputs if is_video_file(i)]
    if camera is not None or videos:
        if (camera is not None and inputs) or len(inputs) > 1:
            raise click.UsageError("give one video, or --camera N, and nothing else to analyse")
        if aligned:
            raise click.UsageError("--aligned is for 112x112 face crops, not videos")
        _analyze_video(inputs[0] if inputs else camera, pack, root, det_size, json_path, draw_path, embedding,
                       every, gallery_path, threshold, max_frames, quiet)
        return
    if not inputs:
        raise click.UsageError("give images, folders, - (paths on stdin), a video file or --camera N")
    for name, value, default in (("--every", every, 1), ("--gallery", gallery_path, None),
                                 ("--threshold", threshold, None), ("--max-frames", max_frames, None)):
        if value != default:
            raise click.UsageError(f"{name} is for videos (for photos, use `bfm gallery search`)")
    from .analyze import analyze_images

    app = _app(pack, root, det_size)

    def show(record):
        if quiet:
            return
        faces = record["faces"]
        click.echo(f"{record['image']}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
        if faces:
            click.echo(f"  {'#':>3}  {'box x1,y1,x2,y2':<22} {'det':>5}  {'state':<9} {'mask':<5}  extractor")
        for i, face in enumerate(faces):
            click.echo(_face_row(i, face))

    run = analyze_images(app, inputs, aligned=aligned, json_path=json_path, draw_dir=draw_path,
                         embedding=embedding, progress=not quiet, on_image=show)
    click.echo(str(run), err=True)
    for path, why in run.misses[:10]:
        click.echo(f"  skipped {path}: {why}", err=True)


def _analyze_video(source, pack, root, det_size, json_path, draw_path, embedding, every, gallery_path,
                   threshold, max_frames, quiet):
    from .video import analyze_video, check_video_request

    check_video_request(source, every, max_frames)
    app = _app(pack, root, det_size)
    run = analyze_video(app, source, every=every, gallery_path=gallery_path, threshold=threshold,
                        json_path=json_path, draw_path=draw_path, max_frames=max_frames, embedding=embedding,
                        progress=not quiet)
    if not quiet:
        for track in run.tracks:
            summary = track.summary()
            states = ", ".join(f"{'masked' if s['masked'] else 'unmasked'} {s['first']}-{s['last']}"
                               for s in summary["segments"])
            who = ""
            if "identity" in summary:
                votes, name = summary["votes"], summary["identity"]
                who = f"; {name} ({votes.get(name, 0)}/{sum(votes.values())} votes)"
            click.echo(f"track {track.id}: frames {summary['first_frame']}-{summary['last_frame']} "
                       f"({summary['analysed_frames']} analysed): {states}{who}")
    click.echo(str(run), err=True)


@click.command("compare")
@click.argument("image_a", type=click.Path(dir_okay=False))
@click.argument("image_b", type=click.Path(dir_okay=False))
@pack_options
@click.option("--threshold", type=float,
              help="Squared L2 distance at or below which two faces are the same person "
                   "(default: the pack's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.pass_context
def compare(ctx, image_a, image_b, pack, root, det_size, aligned, threshold, as_json):
    """Same person? The main face of IMAGE_A and of IMAGE_B by the pair rule.

    Exit status: 0 same, 1 different, 2 error.
    """
    from .compare import compare_images

    _check_threshold(threshold)
    app = _app(pack, root, det_size)
    r = compare_images(app, image_a, image_b, threshold=threshold, aligned=aligned)
    if as_json:
        click.echo(json.dumps(r))
    else:
        for key, path in (("face_a", image_a), ("face_b", image_b)):
            f = r[key]
            click.echo(f"{path}: {'masked' if f['masked'] else 'unmasked'} ({f['mask_score']:.3f})")
        names = {1: "both unmasked", 2: "one masked", 3: "both masked"}
        click.echo(f"case {r['case']} ({names[r['case']]}), extractor {r['extractor']}")
        click.echo(f"similarity {r['similarity']:.4f}, distance {r['distance']:.4f}, threshold "
                   f"{r['threshold']:.4f}: {'same person' if r['same'] else 'different people'}")
    ctx.exit(0 if r["same"] else 1)


@click.group("gallery")
def gallery():
    """Enrol people into a gallery file (.npz), search photos in it, list it, remove people."""


@gallery.command("enrol")
@click.argument("gallery_path", metavar="GALLERY", type=click.Path(dir_okay=False))
@click.argument("folder", metavar="DIR")
@pack_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def enrol(gallery_path, folder, pack, root, det_size, aligned, quiet):
    """Enrol the main face of every image of DIR (one sub-folder per identity, or files named after
    the person) into GALLERY; creates it if needed. Idempotent and resumable."""
    from .gallery import enrol_folder

    app = _app(pack, root, det_size)
    summary = enrol_folder(app, gallery_path, folder, aligned=aligned, progress=not quiet)
    click.echo(str(summary))
    for path, why in summary.misses[:10]:
        click.echo(f"  missed {path}: {why}", err=True)


@gallery.command("search")
@click.argument("gallery_path", metavar="GALLERY", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@pack_options
@click.option("-k", "k", type=int, default=5, show_default=True, help="Matches per face.")
@click.option("--threshold", type=float,
              help="Squared L2 distance above which a match is 'unknown', for both extractors (default: the "
                   "pack's open-set thresholds).")
@click.option("--fpir", type=float,
              help="Use the pack's open-set thresholds at this false-positive identification rate (share of "
                   "strangers named), e.g. 0.001; from its calibration curve.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write JSON lines here.")
@click.option("--draw", "draw_dir", type=click.Path(file_okay=False),
              help="Write a picture per image with each face labelled with its identity here.")
@click.option("--quiet", is_flag=True, help="No table, no progress bar.")
def search(gallery_path, inputs, pack, root, det_size, aligned, k, threshold, fpir, json_path, draw_dir,
           quiet):
    """Who is in IMAGE_OR_DIR...? Top-k gallery entries for every face, and its answer: the best entry
    within the pack's open-set threshold, else unknown."""
    import warnings

    from ..app import SearchThresholdWarning
    from .gallery import search_images

    _check_threshold(threshold)
    if threshold is not None and fpir is not None:
        raise click.UsageError("give --threshold or --fpir, not both")
    app = _app(pack, root, det_size)

    def show(record):
        if quiet:
            return
        click.echo(f"{record['image']}:")
        for i, face in enumerate(record["faces"]):
            hits = ", ".join(f"{m['identity']} {m['similarity']:.3f}" for m in face["matches"])
            state = "masked" if face["masked"] else "unmasked"
            click.echo(f"  {i:>3}  {face['identity']:<24} ({state}; {hits})")

    with warnings.catch_warnings():
        # the library's warnings (a pack without open-set thresholds) as one line, when they happen
        warnings.simplefilter("always", SearchThresholdWarning)
        warnings.showwarning = lambda message, *_a, **_k: click.echo(f"Warning: {message}", err=True)
        run = search_images(app, gallery_path, inputs, k=k, threshold=threshold, fpir=fpir, aligned=aligned,
                            json_path=json_path, draw_dir=draw_dir, progress=not quiet, on_image=show)
    click.echo(str(run), err=True)


@gallery.command("list")
@click.argument("gallery_path", metavar="GALLERY", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_(gallery_path, as_json):
    """Identities in GALLERY and their number of entries."""
    from .gallery import list_gallery

    info = list_gallery(gallery_path)
    if as_json:
        click.echo(json.dumps(info))
        return
    for name, count in info["identities"].items():
        click.echo(f"{name}\t{count}")
    click.echo(f"{info['entries']} entries ({info['masked_entries']} masked) of {len(info['identities'])} "
               f"identities, {info['embedding_size']}-D, pack {info['pack']}", err=True)


@gallery.command("remove")
@click.argument("gallery_path", metavar="GALLERY", type=click.Path(dir_okay=False))
@click.argument("names", nargs=-1, required=True)
def remove(gallery_path, names):
    """Remove every entry of each NAME from GALLERY."""
    from .gallery import remove_identities

    for name, count in remove_identities(gallery_path, names).items():
        click.echo(f"removed {name}: {count} entr{'y' if count == 1 else 'ies'}")
