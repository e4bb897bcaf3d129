"""The wheel list (wheels.txt) and the size check of what travels to the GPU machine.

    python3 benchmarks/device/wheels.py list [GROUP ...]     # name==version lines (default: core)
    python3 benchmarks/device/wheels.py check [--whl .whl]   # sizes; exit 1 when over the limit

The device tool sends the working tree (tracked files and untracked files git does not ignore)
plus the carried paths, 64 MiB in all (/work/.library/device/README.md). `check` adds up the
tree, the wheels in --whl and says what is left; it also fails on two versions of one package in
--whl (they stop the whole install there) and on a wheel that is not in wheels.txt.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WHEELS_TXT = os.path.join(HERE, "wheels.txt")
LIMIT_BYTES = 64 * 2**20  # the working tree and the carried paths together


def normalize(name: str) -> str:
    """PEP 503 name, with '_' as wheel file names spell it."""
    return re.sub(r"[-_.]+", "_", name).lower()


def parse(path: str = WHEELS_TXT) -> dict[str, list[tuple[str, str]]]:
    """{group: [(name, version), ...]} of wheels.txt; raises ValueError on a malformed line."""
    groups: dict[str, list[tuple[str, str]]] = {}
    group = None
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            header = re.fullmatch(r"\[([a-z0-9_-]+)\]", line)
            if header:
                group = header.group(1)
                groups.setdefault(group, [])
                continue
            pin = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
            if not pin or group is None:
                raise ValueError(f"{path}:{number}: expected `[group]` or `name==version` under a group, got {line!r}")
            groups[group].append((pin.group(1), pin.group(2)))
    names = [normalize(n) for pins in groups.values() for n, _ in pins]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: listed twice: {', '.join(dupes)}")
    return groups


def tree_bytes(root: str = ROOT) -> int:
    """Bytes of what the device tool sends besides the carried paths: tracked and untracked files
    git does not ignore, and shared/ where the checkout has one."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    files = {p for p in out.decode().split("\0") if p}
    total = sum(os.path.getsize(os.path.join(root, p)) for p in files if os.path.isfile(os.path.join(root, p)))
    shared = os.path.join(root, "shared")
    if os.path.isdir(shared):
        for dirpath, _, names in os.walk(shared):
            total += sum(os.path.getsize(os.path.join(dirpath, n)) for n in names)
    return total


def wheel_files(whl: str) -> dict[str, list[str]]:
    """{normalized name: [wheel file, ...]} in the folder."""
    found: dict[str, list[str]] = {}
    for name in sorted(os.listdir(whl)) if os.path.isdir(whl) else []:
        if name.endswith(".whl"):
            found.setdefault(normalize(name.split("-", 1)[0]), []).append(name)
    return found


def check(whl: str, root: str = ROOT) -> tuple[bool, str]:
    """(within the limit and consistent, a report)."""
    tree = tree_bytes(root)
    found = wheel_files(whl)
    wheels = sum(os.path.getsize(os.path.join(whl, f)) for files in found.values() for f in files)
    listed = {normalize(n) for pins in parse().values() for n, _ in pins}
    problems = [f"two versions of {n}: {', '.join(fs)}" for n, fs in found.items() if len(fs) > 1]
    problems += [f"{fs[0]} is not in wheels.txt" for n, fs in found.items() if n not in listed]
    left = LIMIT_BYTES - tree - wheels
    if left < 0:
        problems.append(f"over the {LIMIT_BYTES / 2**20:.0f} MiB limit by {-left / 2**20:.1f} MiB")
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    lines = [
        f"working tree {mib(tree)} + {sum(map(len, found.values()))} wheels in {whl} {mib(wheels)} "
        f"= {mib(tree + wheels)} of {mib(LIMIT_BYTES)}; {mib(left)} left",
        *[f"  {fs[0]}  {mib(os.path.getsize(os.path.join(whl, fs[0])))}" for fs in found.values()],
        *[f"problem: {p}" for p in problems],
    ]
    return not problems, "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list")
    listing.add_argument("groups", nargs="*", default=["core"])
    checking = sub.add_parser("check")
    checking.add_argument("--whl", default=os.path.join(ROOT, ".whl"))
    args = p.parse_args(argv)
    groups = parse()
    if args.command == "list":
        unknown = [g for g in args.groups if g not in groups]
        if unknown:
            p.error(f"unknown groups {unknown}; wheels.txt has {', '.join(groups)}")
        print("\n".join(f"{n}=={v}" for g in args.groups for n, v in groups[g]))
        return 0
    ok, report = check(args.whl)
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
