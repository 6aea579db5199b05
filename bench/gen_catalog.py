"""Generate a realistic catalog of N images over K files, deterministically from a seed.

    python bench/gen_catalog.py OUT_DIR --images 10000 --files 20 --seed 1
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

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


def image(rng: random.Random, index: int) -> list[str]:
    family, os_version = rng.choice(OS_VERSIONS)
    role = rng.choice(ROLES)
    lines = [
        f"  - name: {family}-{role}-{REGIONS[index % len(REGIONS)]}-r{index:06d}",
        f"    os_version: {os_version}",
        f"    min_disk: {rng.choice([40, 50, 60, 100, 200])}",
        f"    tags: [{family}, {role}, release-{2020 + index % 6}]",
    ]
    if rng.random() < 0.5:
        lines.append(f"    min_ram: {rng.choice([1024, 2048, 4096, 8192])}")
    if family == "windows":
        lines.append("    disk_format: vhd")
    if rng.random() < 0.3:
        lines.append("    protected: true")
    if rng.random() < 0.7:
        lines += ["    properties:", f"      build_id: \"{rng.randrange(10**8):08d}\"",
                  f"      hw_firmware_type: {rng.choice(['bios', 'uefi'])}"]
    return lines


def generate(out: Path, images: int, files: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    per_file = -(-images // files)
    for f in range(files):
        start, stop = f * per_file, min(images, (f + 1) * per_file)
        if start >= stop:
            break
        team = TEAMS[f % len(TEAMS)]
        lines = ["defaults:", "  disk_format: zvhd2", "  min_ram: 1024",
                 "  tags: [managed-by-reconcile]", "  properties:",
                 f"    owner_team: {team}", "images:"]
        for i in range(start, stop):
            lines += image(rng, i)
        (out / f"images-{f:03d}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generate(args.out, args.images, args.files, args.seed)


if __name__ == "__main__":
    main()
