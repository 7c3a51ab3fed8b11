"""vcomp: compositional video synthesis and editing (VideoComposer) from the command line.

Importing this package stays fast: torch, diffusers and open_clip are imported lazily by the
modules that need them.
"""

__version__ = "0.1.0"
