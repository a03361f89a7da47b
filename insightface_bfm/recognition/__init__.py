"""From photos to answers with a BFM pack: who is in this photo, is this face masked, are these
two the same person, who in a gallery is this.

- ``analyze``: every face of each image (box, detection score, masked, mask score, extractor);
- ``compare``: the main faces of two images by the pair rule, same or different;
- ``gallery``: enrol folders of people into a gallery file, search photos in it, list, remove.

What ``bfm analyze``, ``bfm compare`` and ``bfm gallery`` run; torch-free.
"""

from .analyze import analyze_images, face_record, open_app
from .compare import compare_images
from .gallery import enrol_folder, list_gallery, open_gallery, remove_identities, search_images

__all__ = [
    "analyze_images",
    "compare_images",
    "enrol_folder",
    "face_record",
    "list_gallery",
    "open_app",
    "open_gallery",
    "remove_identities",
    "search_images",
]
