"""From photos to answers with a BFM pack: who is in this photo, is this face masked, are these
two the same person, who in a gallery is this.

- ``analyze``: every face of each image (box, detection score, masked, mask score, extractor);
- ``compare``: the main faces of two images by the pair rule, same or different;
- ``gallery``: enrol folders of people into a gallery file, search photos in it, list, remove.

- ``video``: faces of a video file or camera linked into tracks, mask state over time, identity by vote.

What ``bfm analyze``, ``bfm compare``, ``bfm gallery`` and ``bfm serve`` run; torch-free.
"""

from .analyze import analyze_images, face_record, open_app
from .compare import compare_images, compare_pictures
from .gallery import (
    enrol_folder,
    enrol_pictures,
    list_gallery,
    open_gallery,
    remove_identities,
    search_faces,
    search_images,
    searchable_gallery,
)
from .video import analyze_video

__all__ = [
    "analyze_images",
    "analyze_video",
    "compare_images",
    "compare_pictures",
    "enrol_folder",
    "enrol_pictures",
    "face_record",
    "list_gallery",
    "open_app",
    "open_gallery",
    "remove_identities",
    "search_faces",
    "search_images",
    "searchable_gallery",
]
