"""API profiles: what one flavour of the Image API accepts, and what it fills in by default.

``ims`` (the default) follows Huawei Cloud IMS's "Creating Image Metadata" document; rules that
only other IMS documents state are lint warnings, errors under ``--strict``. ``glance`` follows
upstream OpenStack Glance's schema and defaults. Checks here are per value and return messages;
the catalog loader adds file, line and field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.models import MARKER_PROPERTY
from reconciler.osversions import KNOWN_OS_VERSIONS

INT32_MAX = 2**31 - 1

#: Catalog fields, in the order the docs list them. ``properties`` holds extra properties.
FIELDS: tuple[str, ...] = (
    "name", "os_version", "visibility", "protected", "container_format", "disk_format",
    "min_ram", "min_disk", "tags", "properties", "drift",
)
STRING_FIELDS = frozenset({"name", "os_version", "visibility", "container_format", "disk_format",
                           "drift"})
#: ``drift:``, the one catalog field that is not sent: what apply does with a drifted image.
DRIFT_POLICIES = frozenset({"update", "report"})
INT_FIELDS = frozenset({"min_ram", "min_disk"})

# Keys the server owns (read-only, reserved, or computed): never user properties.
SERVER_KEYS = frozenset({
    "id", "owner", "status", "checksum", "size", "virtual_size", "created_at", "updated_at",
    "direct_url", "self", "file", "schema", "stores", "location", "locations", "deleted",
    "deleted_at", "os_hash_algo", "os_hash_value", "os_hidden",
})
# Computed by IMS from __os_version and the image type.
_IMS_COMPUTED = frozenset({
    "__os_type", "__platform", "__os_bit", "__imagetype", "__isregistered",
    "__image_source_type", "__image_size", "__root_origin", "virtual_env_type",
})
_BASE_AS_PROPERTY = {
    "name": "name", "visibility": "visibility", "protected": "protected",
    "container_format": "container_format", "disk_format": "disk_format",
    "min_ram": "min_ram", "min_disk": "min_disk", "tags": "tags", "__os_version": "os_version",
}
_IMS_NAME = re.compile(r"^(?! )[A-Za-z0-9._ -]{1,128}(?<! )$")
_FOUR_BYTE = re.compile("[\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Profile:
    name: str
    defaults: Mapping[str, Any]
    visibilities: frozenset[str]
    container_formats: frozenset[str]
    disk_formats: frozenset[str]
    name_max: int
    min_disk_range: tuple[int, int]
    max_tags: int
    max_properties: int
    max_string: int | None  # longest string value allowed anywhere, None = no limit
    computed_keys: frozenset[str] = field(default_factory=frozenset)
    lint_ims_rules: bool = False
    empty_strings: bool = False  # an empty os_version or property name is accepted
    admin_visibilities: frozenset[str] = field(default_factory=frozenset)
    # Where the allowed visibilities and formats come from, for every message that refuses
    # one: the built-in defaults, or the server's own schema (``serverinfo``).
    source: str = ""
    os_versions: frozenset[str] = KNOWN_OS_VERSIONS
    os_source: str = "reconcile's built-in IMS OS list (no region list read or cached)"
    # Formats a setting (allow_disk_formats, ...) adds; named when the server refuses them.
    configured: frozenset[str] = field(default_factory=frozenset)
    # The server schema's rule (a JSON schema) per extra property it declares.
    property_rules: Mapping[str, Any] = field(default_factory=dict)

    def check_value(self, key: str, value: Any) -> str | None:
        """The error for one already type-checked field value, or None."""
        if isinstance(value, str):
            if _FOUR_BYTE.search(value):
                return "contains a 4-byte Unicode character (e.g. an emoji), which the API rejects"
            if self.max_string is not None and len(value) > self.max_string:
                return f"is {len(value)} characters long; at most {self.max_string} allowed"
        if key == "name":
            if not value:
                return "must not be empty"
            if len(value) > self.name_max:
                return (f"is {len(value)} characters long; {self.source} allows at most "
                        f"{self.name_max}")
        elif key == "visibility" and value in self.admin_visibilities:
            return (f"{value!r} needs the admin role under {self.name}'s default policy (403 "
                    "publicize_image); create the image private or shared and have an admin "
                    "change its visibility")
        elif key == "visibility" and value not in self.visibilities:
            return self._one_of(value, self.visibilities)
        elif key == "container_format" and value not in self.container_formats:
            return self._one_of(value, self.container_formats)
        elif key == "disk_format" and value not in self.disk_formats:
            return self._one_of(value, self.disk_formats)
        elif key == "min_disk":
            lo, hi = self.min_disk_range
            if not lo <= value <= hi:
                return f"is {value}; the {self.name} profile allows {lo} to {hi} (GB)"
        elif key == "min_ram" and not 0 <= value <= INT32_MAX:
            return f"is {value}; must be between 0 and {INT32_MAX} (MB)"
        elif key == "drift" and value not in DRIFT_POLICIES:
            return (f"{value!r} is not a drift policy; use update (change the image in place) "
                    "or report (only show the drift)")
        elif key == "os_version" and not value and not self.empty_strings:
            return "must not be empty"
        elif key in self.property_rules:
            return self._property_rule(key, value)
        return None

    def _one_of(self, value: Any, allowed: frozenset[str]) -> str:
        message = f"{value!r} is not allowed by {self.source}; " + (
            f"use one of: {_listed(allowed)}" if allowed else "it allows no value here")
        if value in self.configured:
            message += (" (your allow_* setting adds it, but the server's schema does not list "
                        "it, so the server would refuse it)")
        return message

    def _property_rule(self, key: str, value: Any) -> str | None:
        # jsonschema, like the server itself: the same rule gives the same verdict
        import jsonschema

        validator = jsonschema.validators.validator_for(self.property_rules[key])
        error = jsonschema.exceptions.best_match(
            validator(self.property_rules[key]).iter_errors(value))
        if error is None:
            return None
        return f"is refused by {self.source}: {error.message}"

    def check_tag(self, tag: str) -> str | None:
        if not tag:
            return "must not be empty"
        if _FOUR_BYTE.search(tag):
            return "contains a 4-byte Unicode character (e.g. an emoji), which the API rejects"
        if len(tag) > 255:
            return f"is {len(tag)} characters long; at most 255 allowed"
        return None

    def check_property_key(self, key: str) -> str | None:
        if key in _BASE_AS_PROPERTY:
            return f"is a catalog field, not a property; write it as `{_BASE_AS_PROPERTY[key]}:`"
        if key in SERVER_KEYS or key == MARKER_PROPERTY:
            return "is read-only or reserved for the server and cannot be set"
        if key.startswith("os_glance"):
            return "starts with os_glance, a namespace reserved for the server"
        if key in self.computed_keys:
            return f"is computed by the server from os_version; the {self.name} profile forbids it"
        if not key and not self.empty_strings:
            return "property names must not be empty"
        if len(key) > 255:
            return f"is {len(key)} characters long; property names allow at most 255"
        if _FOUR_BYTE.search(key):
            return "contains a 4-byte Unicode character (e.g. an emoji), which the API rejects"
        return None

    def lint(self, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Rules stricter than the create document: (field, message) warnings."""
        if not self.lint_ims_rules:
            return []
        out: list[tuple[str, str]] = []
        name = spec["name"]
        if not _IMS_NAME.match(name):
            out.append(("name", "IMS image-attribute rules allow 1-128 characters of A-Z a-z 0-9 "
                                "- . _ and inner spaces only"))
        tags = spec.get("tags") or ()
        if len(tags) > 20:
            out.append(("tags", f"has {len(tags)} tags; IMS allows at most 20 per image"))
        for tag in tags:
            if "=" in tag:
                out.append(("tags", f"tag {tag!r} contains '='; IMS native tags may reject it"))
                break
        os_version = spec.get("os_version")
        if os_version is None:
            out.append(("os_version", "is not set; IMS will use 'Other Linux(64 bit)' and ECS "
                                      "creation from this image may fail"))
        elif os_version not in self.os_versions:
            out.append(("os_version", f"{os_version!r} is not in {self.os_source}; names "
                                      "compare exactly, e.g. 'Ubuntu 22.04 server 64bit'"))
        if spec.get("min_disk") is None:
            out.append(("min_disk", "is not set; IMS requires 1-1024 GB for ECS images"))
        return out


IMS = Profile(
    name="ims",
    defaults={"visibility": "private", "protected": False, "container_format": "bare",
              "disk_format": "vhd", "min_ram": 0},
    visibilities=frozenset({"private"}),
    container_formats=frozenset({"bare"}),
    disk_formats=frozenset({"vhd", "zvhd", "zvhd2", "raw", "qcow2"}),
    name_max=255,
    min_disk_range=(1, 1024),
    max_tags=128,
    max_properties=128,
    max_string=255,
    computed_keys=_IMS_COMPUTED,
    lint_ims_rules=True,
    source="the ims profile (IMS's create-image document)",
)

# The typed properties of upstream Glance's etc/schema-image.json, which deployments install
# with the service: the best guess of the server's rules while its schema is unknown.
_UUID_RULE = {"type": ["null", "string"], "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-"
              "([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"}
_UPSTREAM_PROPERTY_RULES = {"kernel_id": _UUID_RULE, "ramdisk_id": _UUID_RULE}

GLANCE = Profile(
    name="glance",
    defaults={},
    visibilities=frozenset({"public", "private", "shared", "community"}),
    container_formats=frozenset({"ami", "ari", "aki", "bare", "ovf", "ova", "docker",
                                 "compressed"}),
    disk_formats=frozenset({"ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi",
                            "iso", "ploop"}),
    name_max=255,
    min_disk_range=(0, INT32_MAX),
    max_tags=128,
    max_properties=128,
    max_string=None,
    empty_strings=True,
    admin_visibilities=frozenset({"public"}),
    property_rules=_UPSTREAM_PROPERTY_RULES,
    source="upstream Glance's defaults (no server schema read or cached; `reconcile validate "
           "--endpoint URL` reads it)",
)

PROFILES: dict[str, Profile] = {"ims": IMS, "glance": GLANCE}

_LISTED = 30  # values named in a refusal; a server's schema may list thousands


def _listed(allowed: frozenset[str]) -> str:
    shown = [v if len(v) <= 64 else f"{v[:61]}..." for v in sorted(allowed)[:_LISTED]]
    more = len(allowed) - len(shown)
    return ", ".join(shown) + (f" (and {more} more)" if more > 0 else "")
