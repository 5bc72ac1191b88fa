"""The file TorchServe loads as the archive's handler.

TorchServe imports this module from the archive's root and instantiates the
one class defined in it. The real code lives in the `handler` package, which
the archive carries beside this file.
"""

from handler.service import SynthDetHandler


class SynthDetService(SynthDetHandler):
    """Entry point TorchServe instantiates once per worker."""
