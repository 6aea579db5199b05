"""The apply use case in one package (docs/architecture.md §6).

``run`` is the lifecycle of one run under the state lock; ``creates`` sends, records and
recovers creates; ``updates`` does the same for updates in place; ``pool`` is the bounded
worker pool both use; ``decisions`` holds every choice of the protocol as a pure function;
``runstate`` is the run's stop flag; ``request`` is what an apply is asked to do and the
rules its options follow.
"""

from reconciler.apply.request import (
    ApplyRequest,
    ApplyResult,
    Preview,
    check_invocation,
    local_state_warning,
)
from reconciler.apply.run import apply_catalog, preview
from reconciler.apply.targets import TargetsApply, TargetsResult, apply_targets

__all__ = [
    "ApplyRequest",
    "ApplyResult",
    "Preview",
    "TargetsApply",
    "TargetsResult",
    "apply_catalog",
    "apply_targets",
    "check_invocation",
    "local_state_warning",
    "preview",
]
