"""A local IMS / Glance v2 image-metadata API with fault injection, for the demo and tests.

``Sandbox(SandboxConfig(...))`` serves on loopback in a background thread; ``serve`` blocks
(the ``reconcile sandbox`` command). See ``config.SandboxConfig`` for the knobs.
"""

from reconciler.sandbox.config import SandboxConfig
from reconciler.sandbox.server import Sandbox, serve

__all__ = ["Sandbox", "SandboxConfig", "serve"]
