"""The IMS ``__os_version`` values this tool knows, and the fields IMS derives from them.

IMS derives ``__os_type``, ``__platform`` and ``__os_bit`` from ``__os_version`` on create.
The authoritative list is per region (``GET /v1/cloudimages/os_version``, docs/api-contract.md
§6.1): reconcile reads it when online and caches it in the state. This module is the built-in
list used without one, by the client-side profile (a warning, an error under ``--strict``)
and by the sandbox (which refuses what is not here), so a demo is never refused an OS version
that IMS offers. It is the union of IMS's "Values of Related Parameters" table
(docs/api-contract.md §6.2) and the current "External Image File Formats and Supported OSs"
table (2024), plus the spelling of Huawei Cloud's public images for the newer Ubuntu releases
(``Ubuntu 22.04 server 64bit``). Strings compare byte-exact: Huawei mixes ``server`` and
``Server`` and writes ``64bit`` without a space, so where the documents spell one release two
ways, both spellings are listed.
"""

from __future__ import annotations

DEFAULT_OS_VERSION = "Other Linux(64 bit)"


def _expand(template: str, values: str) -> list[str]:
    """Fill ``{}`` in *template* with each space-separated value (keeps the list readable);
    ``_`` in a value stands for a space."""
    return [template.format(v.replace("_", " ")) for v in values.split()]


_WINDOWS = [
    "Windows 10 64bit",
    "Windows 7 Enterprise 64bit",
    "Windows 7 Professional 64bit",
    "Windows 7 Professional 32bit",
    "Windows Server 2022 Standard 64bit",
    "Windows Server 2022 Datacenter 64bit",
    "Windows Server 2019 Standard 64bit",
    "Windows Server 2019 Datacenter 64bit",
    "Windows Server 2016 Standard 64bit",
    "Windows Server 2016 Datacenter 64bit",
    "Windows Server 2012 R2 Standard 64bit",
    "Windows Server 2012 Essentials R2 64bit",
    "Windows Server 2012 R2 Essentials 64bit",
    "Windows Server 2012 R2 Datacenter 64bit",
    "Windows Server 2012 Datacenter 64bit",
    "Windows Server 2012 Standard 64bit",
    "Windows Server 2008 R2 WEB 64bit",
    "Windows Server 2008 WEB R2 64bit",
    "Windows Server 2008 R2 Standard 64bit",
    "Windows Server 2008 R2 Enterprise 64bit",
    "Windows Server 2008 R2 Datacenter 64bit",
]

_SUSE = [
    *_expand("SUSE Linux Enterprise Server 15 {} 64bit", "SP5 SP4 SP3 SP2"),
    "SUSE Linux Enterprise Server 15 SP1 64bit",
    "SUSE Linux Enterprise Server 15 64bit",
    "SUSE Linux Enterprise Server 12 SP5 64bit",
    "SUSE Linux Enterprise Server 12 SP4 64bit",
    "SUSE Linux Enterprise Server 12 SP3 64bit",
    "SUSE Linux Enterprise Server 12 SP2 64bit",
    "SUSE Linux Enterprise Server 12 SP1 64bit",
    "SUSE Linux Enterprise Server 12 64bit",
    "SUSE Linux Enterprise Server 11 SP4 64bit",
    "SUSE Linux Enterprise Server 11 SP3 64bit",
    "SUSE Linux Enterprise Server 11 SP3 32bit",
    "SUSE Linux Enterprise Server 11 SP1 64bit",
]

_ORACLE = _expand(
    "Oracle Linux Server release {} 64bit", "7.6 7.5 7.4 7.3 7.2 7.1 7.0 6.10 6.9 6.8 6.7 6.5"
)

_REDHAT = [
    *_expand("Red Hat Linux Enterprise {} 64bit",
             "9.1 9.0 8.7 8.6 8.5 8.4 8.3 8.2 8.1 8.0 7.6 7.5 7.4 7.3 7.2 7.1 7.0 6.10 6.9 6.8 6.7 "
             "6.6 6.5 6.4"),
    *_expand("Red Hat Linux Enterprise {} 32bit", "6.6 6.4"),
    "Red Hat 7.6 64bit",
    "Redhat Linux Enterprise 8.0 64bit",
    "Redhat 7.6 64bit",
    *_expand("Redhat Linux Enterprise {} 64bit", "7.5 7.4 7.3 7.2 7.1 7.0 6.10 6.9 6.8 6.7 6.6"),
    "Redhat Linux Enterprise 6.6 32bit",
    "Redhat Linux Enterprise 6.5 64bit",
    "Redhat Linux Enterprise 6.4 64bit",
    "Redhat Linux Enterprise 6.4 32bit",
]

_UBUNTU = [
    "Ubuntu 22.04 server 64bit",
    "Ubuntu 20.04 server 64bit",
    "Ubuntu 19.04 server 64bit",
    "Ubuntu 18.04 server 64bit",
    # the supported-OSs table writes "Server" throughout
    *_expand("Ubuntu {} Server 64bit",
             "22.04 20.04 19.04 18.04.2 18.04.1 18.04 16.04.6 16.04.5 16.04.4 16.04 14.04.5 "
             "14.04.4 14.04.3 14.04.1 14.04"),
    *_expand("Ubuntu {} Server 32bit", "14.04.4 14.04.3 14.04.1 14.04"),
    "Ubuntu 16.04.3 Server 64bit",
    "Ubuntu 16.04.2 Server 64bit",
    "Ubuntu 16.04 server 64bit",
    "Ubuntu 14.04.5 server 64bit",
    *_expand("Ubuntu 14.04.4 server {}", "64bit 32bit"),
    *_expand("Ubuntu 14.04.3 server {}", "64bit 32bit"),
    *_expand("Ubuntu 14.04.1 server {}", "64bit 32bit"),
    *_expand("Ubuntu 14.04 server {}", "64bit 32bit"),
]

_OPENSUSE = _expand("openSUSE {} 64bit", "42.3 42.2 42.1 15.5 15.4 15.3 15.2 15.1 15.0 13.2 11.3")

_CENTOS = [
    *_expand("CentOS {} 64bit", "8.5 8.4 8.3 8.2 8.1 8.0"),
    *_expand("CentOS {} 64bit", "7.9 7.8 7.7 7.6 7.5 7.4 7.3 7.2 7.1 7.0"),
    "CentOS 7.0 32bit",
    *_expand("CentOS {} 64bit", "6.10 6.9 6.7 6.6 6.5 6.4 6.3"),
    *_expand("CentOS {} 32bit", "6.10 6.9 6.7 6.6 6.5 6.4 6.3"),
    "CentOS 6.8 64bit",
]

_DEBIAN = _expand(
    "Debian GNU/Linux {} 64bit",
    "12.0.0 11.7.0 11.6.0 11.5.0 11.4.0 11.3.0 11.2.0 11.1.0 11.0.0 10.13.0 10.12.0 10.11.0 "
    "10.10.0 10.9.0 10.8.0 10.7.0 10.6.0 10.5.0 10.4.0 10.3.0 10.2.0 10.1.0 10.0.0 9.3.0 9.0.0 "
    "8.10.0 8.8.0 8.7.0 8.6.0 8.5.0 8.4.0 8.2.0 8.1.0",
)

_OTHERS = [
    *_expand("Fedora {} 64bit", "39 38 37 36 35 34 33 32 31 30 29 28 27 26 25 24 23 22"),
    *_expand("EulerOS {} 64bit", "2.12 2.11 2.10 2.9 2.8 2.7 2.5 2.3 2.2 2.1"),
    *_expand("CoreOS {}", "1068.10.0 1010.5.0 1298.6.0"),
    *_expand("openEuler {} 64bit", "22.03_SP1 22.03 20.03_SP3 20.03_SP2 20.03_SP1 20.03"),
    DEFAULT_OS_VERSION,
    "Other(32 bit)",
]

KNOWN_OS_VERSIONS: frozenset[str] = frozenset(
    _WINDOWS + _SUSE + _ORACLE + _REDHAT + _UBUNTU + _OPENSUSE + _CENTOS + _DEBIAN + _OTHERS
)

# Prefix -> IMS __platform, matched in order (first hit wins).
_PLATFORMS: tuple[tuple[str, str], ...] = (
    ("Windows", "Windows"),
    ("SUSE", "SUSE"),
    ("openSUSE", "OpenSUSE"),
    ("Oracle Linux", "Oracle Linux"),
    ("Redhat", "RedHat"),
    ("Red Hat", "RedHat"),
    ("Ubuntu", "Ubuntu"),
    ("CentOS", "CentOS"),
    ("Debian", "Debian"),
    ("Fedora", "Fedora"),
    ("EulerOS", "EulerOS"),
    ("CoreOS", "CoreOS"),
    ("openEuler", "openEuler"),
)


def derive_os_fields(os_version: str) -> dict[str, str]:
    """Return the ``__os_type``, ``__platform`` and ``__os_bit`` IMS derives
    (docs/api-contract.md §5.4).

    Works on any string, known or not: unknown families get platform ``Other``.
    """
    lowered = os_version.lower()
    os_bit = "32" if ("32bit" in lowered or "32 bit" in lowered) else "64"
    if lowered.startswith("windows"):
        os_type = "Windows"
    elif lowered.startswith("other("):
        os_type = "Other"
    else:
        os_type = "Linux"
    platform = next(
        (name for prefix, name in _PLATFORMS if lowered.startswith(prefix.lower())), "Other"
    )
    return {"__os_type": os_type, "__platform": platform, "__os_bit": os_bit}
