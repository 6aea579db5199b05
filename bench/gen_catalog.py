"""Generate a realistic catalog of N images over K files, deterministically from a seed.

    python bench/gen_catalog.py OUT_DIR --images 10000 --files 20 --seed 1

``generate`` writes the files; ``merged_images`` yields, for the same arguments, each image's
fields with its file's defaults merged in (scalars override, tags united defaults first,
properties merged), without writing or parsing YAML. The benchmarks use it to build state
files and sandbox data quickly; they check that ``reconcile plan`` agrees with it.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OS_VERSIONS = [
    ("ubuntu", "Ubuntu 18.04 server 64bit"), ("ubuntu", "Ubuntu 16.04 server 64bit"),
    ("centos", "CentOS 7.6 64bit"), ("centos", "CentOS 8.0 64bit"),
    ("debian", "Debian GNU/Linux 10.0.0 64bit"), ("euleros", "EulerOS 2.9 64bit"),
    ("euleros", "EulerOS 2.5 64bit"), ("openeuler", "openEuler 20.03 64bit"),
    ("windows", "Windows Server 2016 Datacenter 64bit"), ("fedora", "Fedora 30 64bit"),
]
ROLES = ["base", "docker", "k8s-node", "gpu", "db", "web", "ci-runner", "bastion"]
REGIONS = ["cn-north-4", "cn-east-3", "ap-southeast-1", "eu-west-0"]
TEAMS = ["platform", "dba", "ml", "web", "sre"]


def image_fields(rng: random.Random, index: int) -> dict[str, Any]:
    """One image as written in its file (before defaults), drawing from ``rng``."""
    family, os_version = rng.choice(OS_VERSIONS)
    role = rng.choice(ROLES)
    fields: dict[str, Any] = {
        "name": f"{family}-{role}-{REGIONS[index % len(REGIONS)]}-r{index:06d}",
        "os_version": os_version,
        "min_disk": rng.choice([40, 50, 60, 100, 200]),
        "tags": [family, role, f"release-{2020 + index % 6}"],
    }
    if rng.random() < 0.5:
        fields["min_ram"] = rng.choice([1024, 2048, 4096, 8192])
    if family == "windows":
        fields["disk_format"] = "vhd"
    if rng.random() < 0.3:
        fields["protected"] = True
    if rng.random() < 0.7:
        fields["properties"] = {"build_id": f"{rng.randrange(10**8):08d}",
                                "hw_firmware_type": rng.choice(["bios", "uefi"])}
    return fields


def image_lines(fields: dict[str, Any]) -> list[str]:
    """The YAML lines of one image of ``image_fields``."""
    lines = [
        f"  - name: {fields['name']}",
        f"    os_version: {fields['os_version']}",
        f"    min_disk: {fields['min_disk']}",
        f"    tags: [{', '.join(fields['tags'])}]",
    ]
    if "min_ram" in fields:
        lines.append(f"    min_ram: {fields['min_ram']}")
    if "disk_format" in fields:
        lines.append(f"    disk_format: {fields['disk_format']}")
    if fields.get("protected"):
        lines.append("    protected: true")
    if "properties" in fields:
        props = fields["properties"]
        lines += ["    properties:", f"      build_id: \"{props['build_id']}\"",
                  f"      hw_firmware_type: {props['hw_firmware_type']}"]
    return lines


def image(rng: random.Random, index: int) -> list[str]:
    return image_lines(image_fields(rng, index))


def file_defaults(file_index: int) -> dict[str, Any]:
    return {"disk_format": "zvhd2", "min_ram": 1024, "tags": ["managed-by-reconcile"],
            "properties": {"owner_team": TEAMS[file_index % len(TEAMS)]}}


def _files(images: int, files: int, seed: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    rng = random.Random(seed)
    per_file = -(-images // files)
    for f in range(files):
        start, stop = f * per_file, min(images, (f + 1) * per_file)
        if start >= stop:
            break
        yield f, [image_fields(rng, i) for i in range(start, stop)]


def generate(out: Path, images: int, files: int, seed: int = 1) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f, fields in _files(images, files, seed):
        team = file_defaults(f)["properties"]["owner_team"]
        lines = ["defaults:", "  disk_format: zvhd2", "  min_ram: 1024",
                 "  tags: [managed-by-reconcile]", "  properties:",
                 f"    owner_team: {team}", "images:"]
        for item in fields:
            lines += image_lines(item)
        (out / f"images-{f:03d}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def merged_images(images: int, files: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """Each image of ``generate(out, images, files, seed)`` with its file's defaults merged."""
    for f, fields in _files(images, files, seed):
        defaults = file_defaults(f)
        for item in fields:
            merged = {**defaults, **item}
            merged["tags"] = list(dict.fromkeys([*defaults["tags"], *item["tags"]]))
            merged["properties"] = {**defaults["properties"], **item.get("properties", {})}
            yield merged


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generate(args.out, args.images, args.files, args.seed)


if __name__ == "__main__":
    main()
