"""The Lambda package: this version of fleetwarden and its runtime dependencies, built for Lambda's platform.

`build_package()` is what `fleetwarden deploy package` runs (docs/deploy.md, "The Lambda package"):

1. fleetwarden itself: from a checkout, its wheel built from a clean copy of the sources (`pip wheel --no-deps`, so
   no stale `build/` can leak in); installed from a wheel (`pip install .` of a clone), the installed files as its
   RECORD lists them; else `fleetwarden==<this version>` found in `--wheel-dir` or on the package index;
2. `pip install --target` for the Lambda runtime (CPython 3.X on manylinux x86_64 or aarch64, binary wheels only) of
   that wheel or of the installed distribution's requirements, without any extra (no demo, dev or opensearch);
3. checks: nothing of the extras crept in, the state machines are there, the unpacked size is within the budget,
   every shared object is an ELF for the target machine and every extension module is for the target Python, and,
   when an interpreter of the target platform is at hand, `import fleetwarden.lambda_handler` succeeds in a
   clean interpreter (`python -I -S -B`, only the unpacked tree on sys.path);
4. a reproducible zip (sorted entries, fixed timestamps and modes), and its sha256.

With `wheel_dir`, pip reads that directory only (`--no-index`): the build is offline and repeatable.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import FleetwardenError, UsageError

MB = 1024 * 1024
# Lambda's Python runtimes that fleetwarden supports (requires-python >= 3.11), and Lambda's architectures with the
# machine name their wheels are tagged with.
PYTHONS: tuple[str, ...] = ("3.11", "3.12", "3.13")
ARCHES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}
# Lambda's limit is 250 MB unzipped for the function's code and all its layers together. Our budget leaves 100 MB
# of it for layers and extensions (Powertools, a monitoring agent) and for growth; today the package is ~60 MB.
LAMBDA_UNZIPPED_LIMIT = 250 * MB
BUDGET_BYTES = 150 * MB
# A zip over 50 MB cannot be uploaded directly (UpdateFunctionCode with ZipFile); from S3, as the hub stack does,
# only the unzipped limit applies.
DIRECT_UPLOAD_LIMIT = 50 * MB
DEFAULT_OUTPUT = Path("fleetwarden-lambda.zip")
IMPORT_CHECK_MODULE = "fleetwarden.lambda_handler"
# Never in the Lambda package: console scripts (their shebang names this machine's python), the embedded emulator
# and the demo (both need the demo extra's moto).
PRUNED: tuple[str, ...] = ("bin", "fleetwarden/emulator", "fleetwarden/demo.py")
# Top-level modules of the extras' distributions (demo, dev, opensearch): finding one means an extra crept in.
EXTRAS_MODULES: tuple[str, ...] = ("moto", "opensearchpy", "pytest", "mypy", "ruff", "hypothesis", "aiosmtpd")
REQUIRED_FILES: tuple[str, ...] = ("fleetwarden/lambda_handler.py", "fleetwarden/statemachines/scan-window.asl.json")
# What a checkout's wheel is built from (copied to a temporary directory first).
SOURCE_FILES: tuple[str, ...] = ("pyproject.toml", "README.md")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_OFFLINE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "Could not fetch URL",
    "ProxyError",
)


@dataclass(frozen=True)
class ImportCheck:
    """Whether `import fleetwarden.lambda_handler` ran from the unpacked tree, and what it showed (or why not)."""

    ran: bool
    detail: str


@dataclass(frozen=True)
class Package:
    """A built Lambda package and the figures `deploy package` prints."""

    path: Path
    sha256: str
    python: str
    arch: str
    source: str
    files: int
    binaries: int
    unpacked_bytes: int
    zipped_bytes: int
    budget_bytes: int
    import_check: ImportCheck

    def summary(self) -> list[str]:
        """The lines `fleetwarden deploy package` prints."""
        direct = "" if self.zipped_bytes <= DIRECT_UPLOAD_LIMIT else " (over 50 MB: upload it to S3, not directly)"
        check = "import check: " + ("ok, " if self.import_check.ran else "skipped, ") + self.import_check.detail
        return [
            f"fleetwarden {__version__} for Lambda python{self.python} {self.arch}, from {self.source}",
            f"unpacked: {_mb(self.unpacked_bytes)} in {self.files} files, within the budget of "
            f"{_mb(self.budget_bytes)} (Lambda's limit: {_mb(LAMBDA_UNZIPPED_LIMIT)} for code and layers)",
            f"zipped: {_mb(self.zipped_bytes)}{direct}",
            f"binaries: {self.binaries} shared objects, all Linux ELF {ARCHES[self.arch]}, extension modules for "
            f"CPython {self.python}",
            check,
            f"sha256: {self.sha256}",
            f"CodeSha256 (as Lambda shows it): {base64.b64encode(bytes.fromhex(self.sha256)).decode()}",
            f"path: {self.path}",
        ]


def _mb(size: int) -> str:
    return f"{size / MB:.1f} MB"


def platforms(python: str, arch: str) -> list[str]:
    """The wheel platform tags Lambda's runtime accepts, newest first: python3.11 runs on Amazon Linux 2 (glibc 2.26),
    later ones on Amazon Linux 2023 (glibc 2.34). pip does not expand a `manylinux_2_X` tag to older glibc
    versions itself, so every one is listed."""
    validate(python, arch)
    machine = ARCHES[arch]
    glibc = 26 if python == "3.11" else 34
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc, 16, -1)] + [f"manylinux2014_{machine}"]
    if machine == "x86_64":
        tags += ["manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
    return tags


def validate(python: str, arch: str) -> None:
    """Refuse a runtime or architecture Lambda (or fleetwarden) does not have."""
    if python not in PYTHONS:
        raise UsageError(f"--python {python!r}: expected one of Lambda's Python runtimes {', '.join(PYTHONS)}")
    if arch not in ARCHES:
        raise UsageError(f"--arch {arch!r}: expected one of {', '.join(ARCHES)}")


def _index_args(wheel_dir: Path | None) -> list[str]:
    return [] if wheel_dir is None else ["--no-index", "--find-links", str(wheel_dir)]


def _pip(args: Sequence[str], what: str, python: str, arch: str, wheel_dir: Path | None) -> None:
    """Run pip; its failures become one clear message (a missing wheel, no network) instead of pip's pages."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode == 0:
        return
    output = done.stderr + done.stdout
    if "No module named pip" in output:
        raise UsageError(f"{what} needs pip in this Python ({sys.executable})")
    missing = _NO_MATCH.search(output)
    offline = any(marker in output for marker in _OFFLINE)
    if missing or offline:
        name = missing.group(1) if missing else "a dependency"
        if wheel_dir is not None:
            where = f"in {wheel_dir} (with --wheel-dir only that directory is read)"
        elif offline:
            where = "because the package index is unreachable (offline?)"
        else:
            where = "on the package index (or the index is unreachable)"
        raise UsageError(
            f"{what}: no wheel of {name} for CPython {python} on Lambda {arch} {where}. Fill a wheel directory "
            f"where the index is reachable, then pass it with --wheel-dir: {prepare_command(python, arch)}"
        )
    tail = "\n".join(output.strip().splitlines()[-15:])
    raise FleetwardenError(f"{what} failed (pip exit {done.returncode}):\n{tail}")


def prepare_command(python: str, arch: str, wheel_dir: str = "wheels") -> str:
    """The commands that fill a wheel directory for an offline `deploy package --wheel-dir` (from a checkout)."""
    plats = " ".join(f"--platform {p}" for p in platforms(python, arch))
    return (
        f"`pip download -d {wheel_dir} 'setuptools>=77' wheel && pip wheel --no-deps -w {wheel_dir} . && "
        f"pip download -d {wheel_dir} --only-binary=:all: --implementation cp --python-version {python} {plats} "
        f"{wheel_dir}/fleetwarden-{__version__}-py3-none-any.whl`"
    )


def build_fleetwarden_wheel(
    root: Path, dest: Path, *, python: str = "3.12", arch: str = "x86_64", wheel_dir: Path | None = None
) -> Path:
    """fleetwarden's wheel, built from a clean copy of the checkout at `root` (its sources, not its build/)."""
    work = dest / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(root / "src", work / "src", ignore=ignore)
    for name in SOURCE_FILES:
        shutil.copy2(root / name, work / name)
    for licence in root.glob("LICEN[CS]E*"):
        shutil.copy2(licence, work / licence.name)
    out = dest / "wheel"
    _pip(
        ["wheel", "--no-deps", "--quiet", "-w", str(out), *_index_args(wheel_dir), str(work)],
        "building fleetwarden's wheel from the checkout (its build backend, setuptools>=77 and wheel, comes from "
        "the index or --wheel-dir)",
        python,
        arch,
        wheel_dir,
    )
    wheels = sorted(out.glob("fleetwarden-*.whl"))
    if len(wheels) != 1:
        raise FleetwardenError(f"building fleetwarden's wheel made {len(wheels)} wheels in {out}, expected one")
    return wheels[0]


def install_tree(requirements: Sequence[str], tree: Path, python: str, arch: str, wheel_dir: Path | None) -> None:
    """`pip install --target tree` of `requirements` and their dependencies, binary wheels for Lambda's platform."""
    plats = [arg for p in platforms(python, arch) for arg in ("--platform", p)]
    _pip(
        [
            "install",
            "--quiet",
            "--target",
            str(tree),
            "--implementation",
            "cp",
            "--python-version",
            python,
            *plats,
            "--only-binary=:all:",
            "--no-compile",
            *_index_args(wheel_dir),
            *requirements,
        ],
        f"installing {' '.join(requirements) if len(requirements) == 1 else 'the dependencies'} for Lambda",
        python,
        arch,
        wheel_dir,
    )


def installed_distribution() -> tuple[list[tuple[Path, Path]], list[str]] | None:
    """The installed fleetwarden's files (source, path in the package) and its requirements without extras; None
    for an editable install (its RECORD lists no module) or when fleetwarden is not installed."""
    try:
        dist = importlib.metadata.distribution("fleetwarden")
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != __version__:
        return None
    files = [
        (Path(str(entry.locate())), Path(*entry.parts))
        for entry in dist.files or []
        if entry.parts and (entry.parts[0] == "fleetwarden" or entry.parts[0].startswith("fleetwarden-"))
    ]
    if not any(relative.parts[0] == "fleetwarden" for _, relative in files):
        return None
    requirements = [r for r in dist.requires or [] if "extra" not in r.partition(";")[2]]
    return files, requirements


def copy_installed(files: Sequence[tuple[Path, Path]], tree: Path) -> None:
    """Copy the installed distribution's files into the tree (not bytecode, nor direct_url.json: it names the
    directory this machine installed from)."""
    for source, relative in files:
        if source.suffix == ".pyc" or relative.name == "direct_url.json" or not source.is_file():
            continue
        target = tree / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def prune(tree: Path) -> None:
    """Drop what Lambda never uses (console scripts, the emulator and demo, bytecode caches)."""
    for relative in PRUNED:
        path = tree / relative
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for cache in sorted(tree.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)


def check_tree(tree: Path, budget_bytes: int) -> tuple[int, int]:
    """The unpacked tree's file count and size, refused when an extra crept in, a file is missing or the size is
    over the budget."""
    crept = [name for name in EXTRAS_MODULES if (tree / name).exists() or (tree / f"{name}.py").exists()]
    if crept:
        raise FleetwardenError(f"the package holds {', '.join(crept)}: an extra's dependency crept in")
    missing = [name for name in REQUIRED_FILES if not (tree / name).is_file()]
    if missing:
        raise FleetwardenError(f"the package lacks {', '.join(missing)} (built from an older fleetwarden?)")
    files = [path for path in tree.rglob("*") if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    if size > budget_bytes:
        raise FleetwardenError(
            f"the package is {_mb(size)} unpacked, over its budget of {_mb(budget_bytes)} "
            f"(Lambda's limit: {_mb(LAMBDA_UNZIPPED_LIMIT)} for code and layers together)"
        )
    return len(files), size


# ELF's e_machine (offset 18, little-endian) for Lambda's architectures.
_ELF_MACHINES: dict[str, int] = {"x86_64": 62, "aarch64": 183}
_EXTENSION = re.compile(r"\.cpython-(\d+)-([a-z0-9_]+)-linux-gnu\.so$")


def check_binaries(tree: Path, python: str, arch: str) -> int:
    """Every shared object is a Linux ELF for the target machine, and every CPython extension module is built for
    the target Python: checkable without running the target's interpreter. The count of shared objects."""
    machine = ARCHES[arch]
    wanted_abi = python.replace(".", "")
    wrong: list[str] = []
    objects = sorted(p for p in tree.rglob("*") if p.is_file() and (p.suffix == ".so" or ".so." in p.name))
    for path in objects:
        relative = path.relative_to(tree).as_posix()
        with path.open("rb") as handle:
            header = handle.read(20)
        if header[:4] != b"\x7fELF" or len(header) < 20:
            wrong.append(f"{relative} (not a Linux ELF object)")
            continue
        if int.from_bytes(header[18:20], "little") != _ELF_MACHINES[machine]:
            wrong.append(f"{relative} (not built for {machine})")
            continue
        tagged = _EXTENSION.search(path.name)
        if tagged and (tagged.group(1) != wanted_abi or tagged.group(2) != machine):
            wrong.append(f"{relative} (built for CPython {tagged.group(1)} on {tagged.group(2)})")
    if wrong:
        raise FleetwardenError(
            f"the package has binaries Lambda python{python} {arch} cannot load: " + "; ".join(wrong[:10])
        )
    return len(objects)


_PROBE = (
    "import platform, sys; "
    "print(sys.implementation.name, '%d.%d' % sys.version_info[:2], sys.platform, platform.machine(), "
    "platform.libc_ver()[0])"
)
# The handler imports its workflows lazily, so after it every fleetwarden module in the tree is imported too: that
# loads every dependency (binary ones included) a Lambda event could reach.
_IMPORT = (
    "import importlib, pkgutil, sys\n"
    "tree = sys.argv[1]\n"
    "sys.path.insert(0, tree)\n"
    "import {module} as module\n"
    "assert module.__file__.startswith(tree), module.__file__\n"
    "assert callable(module.handler)\n"
    "import fleetwarden\n"
    "names = [m.name for m in pkgutil.walk_packages(fleetwarden.__path__, 'fleetwarden.')]\n"
    "for name in names:\n"
    "    importlib.import_module(name)\n"
    "print(len(names), len(sys.modules))\n"
)


def _matching_interpreter(python: str, arch: str) -> tuple[str | None, str]:
    """An interpreter of the target platform (this one, else `python3.X` on PATH), or None and what was found."""
    wanted = f"cpython {python} linux {ARCHES[arch]} glibc"
    seen: list[str] = []
    for exe in dict.fromkeys(filter(None, [sys.executable, shutil.which(f"python{python}")])):
        try:
            probe = subprocess.run([exe, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found = probe.stdout.strip()
        if found == wanted:
            return exe, found
        seen.append(found or f"{exe}: no answer")
    return None, "; ".join(seen)


def import_check(tree: Path, python: str, arch: str) -> ImportCheck:
    """`import fleetwarden.lambda_handler`, then every fleetwarden module, from the unpacked tree in a clean
    interpreter of the target platform."""
    exe, found = _matching_interpreter(python, arch)
    if exe is None:
        return ImportCheck(
            ran=False,
            detail=f"no CPython {python} on Linux {ARCHES[arch]} (glibc) here to import {IMPORT_CHECK_MODULE} with "
            f"the package's binary wheels (found: {found or 'nothing'})",
        )
    code = _IMPORT.format(module=IMPORT_CHECK_MODULE)
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [exe, "-I", "-S", "-B", "-c", code, str(tree)], capture_output=True, text=True, cwd=cwd, timeout=120
        )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise FleetwardenError(f"`import {IMPORT_CHECK_MODULE}` fails from the unpacked package:\n{tail}")
    ours, loaded = done.stdout.split()
    return ImportCheck(
        ran=True,
        detail=f"`import {IMPORT_CHECK_MODULE}`, then of all {ours} fleetwarden modules, succeeded in a clean {exe} "
        f"(python -I -S -B, only the package on sys.path; {loaded} modules loaded)",
    )


def write_zip(tree: Path, output: Path) -> tuple[str, int]:
    """A reproducible zip of the tree (sorted entries, fixed dates and modes): its sha256 and size."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        entries = sorted((p.relative_to(tree).as_posix(), p) for p in tree.rglob("*") if p.is_file())
        for name, path in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o100644 << 16  # Lambda needs files readable by its user, nothing executable
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    partial.replace(output)
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    return digest, output.stat().st_size


def build_package(
    output: Path = DEFAULT_OUTPUT,
    python: str = "3.12",
    arch: str = "x86_64",
    wheel_dir: Path | None = None,
    *,
    source: Path | None = None,
    use_installed: bool = False,
    budget_bytes: int = BUDGET_BYTES,
) -> Package:
    """Build and check the Lambda zip at `output`: from the checkout `source` if given, else (`use_installed`) from
    the installed fleetwarden, else `fleetwarden==<this version>` from `wheel_dir` (only) or the package index."""
    validate(python, arch)
    if wheel_dir is not None and not wheel_dir.is_dir():
        raise UsageError(f"--wheel-dir {wheel_dir}: not a directory")
    wheel_dir = wheel_dir.resolve() if wheel_dir is not None else None
    with tempfile.TemporaryDirectory(prefix="fleetwarden-package-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        installed = installed_distribution() if source is None and use_installed else None
        if source is not None:
            wheel = build_fleetwarden_wheel(source, work, python=python, arch=arch, wheel_dir=wheel_dir)
            install_tree([str(wheel)], tree, python, arch, wheel_dir)
            origin = f"the checkout {source}"
        elif installed is not None:
            installed_files, requirements = installed
            install_tree(requirements, tree, python, arch, wheel_dir)
            copy_installed(installed_files, tree)
            origin = f"the installed fleetwarden {__version__} ({Path(__file__).resolve().parent})"
        else:
            requirement = f"fleetwarden=={__version__}"
            install_tree([requirement], tree, python, arch, wheel_dir)
            origin = f"{requirement} in {wheel_dir}" if wheel_dir is not None else f"{requirement} on the index"
        prune(tree)
        files, unpacked = check_tree(tree, budget_bytes)
        binaries = check_binaries(tree, python, arch)
        checked = import_check(tree, python, arch)
        digest, zipped = write_zip(tree, output)
    return Package(
        path=output.resolve(),
        sha256=digest,
        python=python,
        arch=arch,
        source=origin,
        files=files,
        binaries=binaries,
        unpacked_bytes=unpacked,
        zipped_bytes=zipped,
        budget_bytes=budget_bytes,
        import_check=checked,
    )


__all__ = ["ARCHES", "BUDGET_BYTES", "DEFAULT_OUTPUT", "PYTHONS", "Package", "build_package", "platforms"]
