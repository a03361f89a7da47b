"""Model zoo: BFM packs, the registries of downloadable packs, downloads, building a pack from
faces and a pretrained recogniser (``build``, needs torch), publishing one (``publish``), and the
routing patch that lets insightface's ``model_zoo.get_model`` recognise our mask classifier.

Importing this package installs that patch (``registration.register()``, idempotent,
undone by ``registration.unregister()``).
"""

from .packs import Pack, PackThresholds, build_pack, load_pack, resolve_root
from .registration import register, unregister

register()

__all__ = ["Pack", "PackThresholds", "build_pack", "load_pack", "resolve_root", "register", "unregister"]
