"""The profile a run validates with: what the server says it accepts, read or remembered.

Online (``apply``, ``plan --refresh``, ``validate --endpoint``) the server is asked
(``serverinfo``: Glance's image schema, IMS's OS list) and its answer is kept in the state
file for that target, with when it was read; offline runs use the last answer kept there;
without either, the built-in profile. A server that cannot answer is not an error: the run
goes on with the cached answer or the built-ins and says so in a note (even after a 401,
which the run's own requests then meet and report as they always do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reconciler.clock import Clock
from reconciler.errors import ApiError, StateError
from reconciler.models import iso
from reconciler.profiles import Profile
from reconciler.serverinfo import (
    KIND_OF,
    OS_VERSIONS_PATH,
    SCHEMA_PATH,
    InvalidServerInfo,
    Kind,
    ServerInfo,
    profile_for,
)
from reconciler.state import (
    SCHEMA_VERSION,
    LockRequest,
    StateStore,
    open_for_write,
    open_readonly,
    schema_version,
)

_WHAT = {"image_schema": "image schema", "os_versions": "OS list"}


class RulesApi(Protocol):
    """What is read of ``ImageClient`` here."""

    def server_info(self, kind: Kind) -> Any: ...


@dataclass(frozen=True)
class Allowances:
    """Formats the user allows beyond the built-in lists (``allow_disk_formats`` ...), for
    deployments whose schema cannot be read. A server schema, once known, overrides them."""

    disk_formats: tuple[str, ...] = ()
    container_formats: tuple[str, ...] = ()


NO_ALLOWANCES = Allowances()


@dataclass(frozen=True)
class RunProfile:
    profile: Profile
    info: ServerInfo | None  # the answer it follows, if any
    notes: tuple[str, ...] = ()  # what went wrong reading or keeping it


def cached(store: StateStore | None, profile: str,
           target: str) -> tuple[ServerInfo | None, str | None]:
    """The answer kept for ``target`` if it is still usable, else why not (if one is kept)."""
    kind = KIND_OF[profile]
    if store is not None and not target:
        # no endpoint given and no records: the one target whose rules were kept, if one
        targets = store.server_info_targets(kind)
        target = targets[0] if len(targets) == 1 else ""
    row = store.server_info(target, kind) if store is not None and target else None
    if row is None:
        return None, None
    info = ServerInfo(kind, row["url"], row["read_at"], row["body"], cached=True)
    try:
        profile_for(profile, info)
    except InvalidServerInfo as exc:  # e.g. kept by a reconcile that checked less
        return None, (f"the {_WHAT[kind]} kept for {target} (read {info.read_at[:10]}) is "
                      f"not usable ({exc.summary()}); using reconcile's built-in "
                      "rules until it is read again")
    return info, None


def offline(profile: str, store: StateStore | None, target: str,
            allow: Allowances = NO_ALLOWANCES) -> RunProfile:
    """The profile of a run that does not talk to the server."""
    info, note = cached(store, profile, target)
    return _build(profile, info, allow, (note,) if note else ())


def online(profile: str, api: RulesApi, target: str, state_path: str | Path, *,
           allow: Allowances = NO_ALLOWANCES, clock: Clock) -> RunProfile:
    """Ask the server and build the profile from its answer (the caller ``keep``s it once
    the catalog is valid); fall back to what the state file kept."""
    kind = KIND_OF[profile]
    path = SCHEMA_PATH if kind == "image_schema" else OS_VERSIONS_PATH
    try:
        body = api.server_info(kind)
    except ApiError as exc:  # a 401 too: the run's own requests then stop it, and say so
        info, unusable = _kept(profile, state_path, target)
        fallback = (f"using the one read {info.read_at[:10]}" if info else
                    f"using reconcile's built-in rules{unusable}")
        return _build(profile, info, allow,
                      (f"could not read the server's {_WHAT[kind]}: {exc}; {fallback}",))
    return _build(profile, ServerInfo(kind, target + path, iso(clock.now()), body), allow, ())


def _build(profile: str, info: ServerInfo | None, allow: Allowances,
           notes: tuple[str, ...]) -> RunProfile:
    return RunProfile(profile_for(profile, info, allow_disk_formats=allow.disk_formats,
                                  allow_container_formats=allow.container_formats), info, notes)


def _kept(profile: str, state_path: str | Path,
          target: str) -> tuple[ServerInfo | None, str]:
    """The usable answer kept for ``target``, or why there is none (to end a note with)."""
    try:
        reader = open_readonly(state_path)
    except StateError:
        return None, ""
    try:
        info, unusable = cached(reader, profile, target)
    finally:
        if reader is not None:
            reader.close()
    return info, " (the one kept is not usable either)" if unusable else ""


def keep(run: RunProfile, target: str, *, store: StateStore | None = None,
         state_path: str | Path = "") -> str | None:
    """Write a fresh answer to the state (``store`` if open for writing, else the file at
    ``state_path``, created if need be). Returns a note instead of raising when that is not
    possible: a read-only state file in a PR check must not fail the check."""
    info = run.info
    if info is None or info.cached or not target:
        return None
    writer = None
    try:
        if store is None:
            if schema_version(state_path) not in (0, SCHEMA_VERSION):
                return (f"the {_WHAT[info.kind]} was not kept: state file {state_path} is of "
                        "an older schema (the next apply migrates it)")
            # a writer like any other: under the target's lock, never while an apply holds it
            store = writer = open_for_write(state_path,
                                            LockRequest(target, "keep the server's rules"))
        store.save_server_info(target, info.kind, url=info.url, body=info.body,
                               read_at=info.read_at)
    except StateError as exc:
        return f"the {_WHAT[info.kind]} was not kept in the state file: {exc}"
    finally:
        if writer is not None:
            writer.close()
    return None
