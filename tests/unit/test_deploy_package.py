"""`fleetwarden deploy package` (the Lambda zip) and `deploy` from a wheel install, outside the checkout.

The packager runs on a small set of fake wheels built here (a `fleetwarden` whose handler imports a dependency,
that dependency, and a `moto` only the demo extra asks for), read with `--wheel-dir` only: no network, a few
seconds. The wheel-install test builds the project's real wheel (`pip wheel --no-deps`, whose build backend comes
from the package index) and skips, saying why, when the index is unreachable.
"""

from __future__ import annotations

import base64
import hashlib
import platform
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetwarden import __version__, deploy, deploy_package
from fleetwarden.cli import main
from fleetwarden.deploy_package import ARCHES, PYTHONS, build_package
from fleetwarden.errors import FleetwardenError, UsageError

ROOT = Path(__file__).resolve().parents[2]
HERE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
HERE_ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
OTHER_ARCH = "arm64" if HERE_ARCH == "x86_64" else "x86_64"
GOOD_HANDLER = "import fwdep\n\n\ndef handler(event, context):\n    return {'value': fwdep.VALUE}\n"
ASL = '{"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}'


def elf(machine: str) -> bytes:
    """The first bytes of a Linux shared object for `machine` (x86_64 or aarch64): enough for the binary check."""
    return b"\x7fELF" + bytes(14) + {"x86_64": 62, "aarch64": 183}[machine].to_bytes(2, "little") + bytes(44)


def fake_wheel(directory: Path, name: str, version: str, files: dict[str, str | bytes], requires: list[str]) -> Path:
    """A pure-Python wheel pip accepts: the files, METADATA with `requires`, WHEEL, entry points and RECORD."""
    stem = re.sub(r"[-_.]+", "_", name)  # the wheel's file and .dist-info names (aws-lambda-powertools: aws_lambda_...)
    dist_info = f"{stem}-{version}.dist-info"
    metadata = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}"]
    metadata += [f"Requires-Dist: {requirement}" for requirement in requires]
    metadata += ["Provides-Extra: demo"] if any("extra ==" in r for r in requires) else []
    contents: dict[str, str | bytes] = {
        **files,
        f"{dist_info}/METADATA": "\n".join(metadata) + "\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if name == "fleetwarden":
        contents[f"{dist_info}/entry_points.txt"] = "[console_scripts]\nfleetwarden = fleetwarden.cli:run\n"
    record = []
    for path, text in contents.items():
        data = text.encode() if isinstance(text, str) else text
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in contents.items():
            archive.writestr(path, text)
    return wheel


def wheel_set(
    directory: Path,
    handler: str = GOOD_HANDLER,
    with_dep: bool = True,
    binaries: dict[str, bytes] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """fleetwarden (handler, state machine, emulator, demo, a console script), fwdep (with `binaries`, shared
    objects by file name, in its package fwbin), and the demo extra's moto."""
    directory.mkdir(parents=True, exist_ok=True)
    fleetwarden_files: dict[str, str | bytes] = {
        "fleetwarden/__init__.py": f'__version__ = "{__version__}"\n',
        "fleetwarden/cli.py": "def run():\n    pass\n",
        "fleetwarden/lambda_handler.py": handler,
        "fleetwarden/statemachines/scan-window.asl.json": ASL,
        "fleetwarden/emulator/__init__.py": "import moto\n",
        "fleetwarden/demo.py": "import moto\n",
    }
    fleetwarden_files.update(extra_files or {})
    requires = ["fwdep>=1", 'moto>=5; extra == "demo"']
    fake_wheel(directory, "fleetwarden", __version__, fleetwarden_files, requires)
    if with_dep:
        dep_files: dict[str, str | bytes] = {"fwdep.py": "VALUE = 42\n"}
        dep_files.update({f"fwbin/{name}": data for name, data in (binaries or {}).items()})
        fake_wheel(directory, "fwdep", "1.0", dep_files, [])
    fake_wheel(directory, "moto", "5.0.20", {"moto/__init__.py": ""}, [])
    return directory


def names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.namelist()


needs_this_platform = pytest.mark.skipif(
    HERE_PYTHON not in PYTHONS or HERE_ARCH not in ARCHES or sys.platform != "linux",
    reason=f"the import check needs a Lambda-like interpreter (CPython {', '.join(PYTHONS)} on Linux x86_64/arm64)",
)


# -- the packager on fake wheels ---------------------------------------------------------------------------------
@needs_this_platform
def test_package_holds_the_runtime_tree_checked_by_a_clean_import(tmp_path: Path) -> None:
    machine = ARCHES[HERE_ARCH]
    speedup = f"_speed.cpython-{HERE_PYTHON.replace('.', '')}-{machine}-linux-gnu.so"
    wheels = wheel_set(tmp_path / "wheels", binaries={speedup: elf(machine), "libz-1234.so.1": elf(machine)})
    package = build_package(tmp_path / "out" / "lambda.zip", HERE_PYTHON, HERE_ARCH, wheels)

    entries = names(package.path)
    assert {"fleetwarden/lambda_handler.py", "fleetwarden/statemachines/scan-window.asl.json", "fwdep.py"} <= set(
        entries
    )
    # No extra's dependency, no emulator or demo, no console scripts, no bytecode.
    assert not [e for e in entries if e.startswith(("moto/", "bin/", "fleetwarden/emulator/"))]
    assert "fleetwarden/demo.py" not in entries
    assert not [e for e in entries if "__pycache__" in e]
    assert package.import_check.ran
    assert "`import fleetwarden.lambda_handler`, then of all 2 fleetwarden modules, succeeded" in (
        package.import_check.detail
    )
    assert f"binaries: 2 shared objects, all Linux ELF {machine}, extension modules for CPython {HERE_PYTHON}" in (
        package.summary()
    )
    assert package.sha256 == hashlib.sha256(package.path.read_bytes()).hexdigest()
    assert package.zipped_bytes == package.path.stat().st_size
    code_sha = base64.b64encode(hashlib.sha256(package.path.read_bytes()).digest()).decode()
    assert f"CodeSha256 (as Lambda shows it): {code_sha}" in package.summary()
    assert 0 < package.unpacked_bytes < package.budget_bytes
    with zipfile.ZipFile(package.path) as archive:
        assert entries == sorted(entries)
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert archive.read("fwdep.py") == b"VALUE = 42\n"
    # Reproducible: the same wheels give the same bytes.
    again = build_package(tmp_path / "again.zip", HERE_PYTHON, HERE_ARCH, wheels)
    assert again.sha256 == package.sha256


def test_import_check_is_skipped_with_the_reason_when_the_platform_differs(tmp_path: Path) -> None:
    package = build_package(tmp_path / "lambda.zip", "3.12", OTHER_ARCH, wheel_set(tmp_path / "wheels"))
    assert not package.import_check.ran
    assert f"no CPython 3.12 on Linux {ARCHES[OTHER_ARCH]}" in package.import_check.detail
    assert "fwdep.py" in names(package.path)
    assert any(line.startswith("import check: skipped, no CPython") for line in package.summary())


@needs_this_platform
def test_a_handler_that_cannot_import_fails_the_build_and_writes_no_zip(tmp_path: Path) -> None:
    wheels = wheel_set(tmp_path / "wheels", handler="import not_in_the_package\n\n\ndef handler(e, c):\n    pass\n")
    with pytest.raises(FleetwardenError, match="No module named 'not_in_the_package'"):
        build_package(tmp_path / "lambda.zip", HERE_PYTHON, HERE_ARCH, wheels)
    assert not (tmp_path / "lambda.zip").exists()


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("_speed.cpython-311-x86_64-linux-gnu.so", elf("x86_64"), "built for CPython 311 on x86_64"),
        ("_speed.cpython-312-x86_64-linux-gnu.so", elf("aarch64"), "not built for x86_64"),
        ("_speed.cpython-312-darwin.so", b"\xcf\xfa\xed\xfe" + bytes(60), "not a Linux ELF object"),
    ],
)
def test_a_binary_for_another_platform_fails_the_build(tmp_path: Path, name: str, data: bytes, problem: str) -> None:
    wheels = wheel_set(tmp_path / "wheels", binaries={name: data})
    with pytest.raises(FleetwardenError, match="cannot load") as caught:
        build_package(tmp_path / "lambda.zip", "3.12", "x86_64", wheels)
    assert f"fwbin/{name} ({problem})" in str(caught.value)
    assert not (tmp_path / "lambda.zip").exists()


@needs_this_platform
def test_a_module_that_needs_an_extra_fails_the_import_check(tmp_path: Path) -> None:
    wheels = wheel_set(tmp_path / "wheels", extra_files={"fleetwarden/search.py": "import opensearchpy\n"})
    with pytest.raises(FleetwardenError, match="No module named 'opensearchpy'") as caught:
        build_package(tmp_path / "lambda.zip", HERE_PYTHON, HERE_ARCH, wheels)
    assert "fleetwarden/search.py" in str(caught.value)
    assert not (tmp_path / "lambda.zip").exists()


def test_over_the_budget_fails_with_the_figures(tmp_path: Path) -> None:
    with pytest.raises(FleetwardenError, match=r"over its budget of 0\.0 MB \(Lambda's limit: 250\.0 MB"):
        build_package(tmp_path / "lambda.zip", "3.12", "x86_64", wheel_set(tmp_path / "wheels"), budget_bytes=10)
    assert not (tmp_path / "lambda.zip").exists()


def test_a_missing_wheel_offline_names_it_and_how_to_fill_the_directory(tmp_path: Path) -> None:
    wheels = wheel_set(tmp_path / "wheels", with_dep=False)
    with pytest.raises(UsageError) as caught:
        build_package(tmp_path / "lambda.zip", "3.12", "x86_64", wheels)
    message = str(caught.value)
    assert "no wheel of fwdep" in message
    assert f"in {wheels.resolve()} (with --wheel-dir only that directory is read)" in message
    assert "pip download -d wheels" in message and "--platform manylinux_2_34_x86_64" in message


def test_bad_runtime_or_architecture_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--python '3\.10'"):
        build_package(tmp_path / "lambda.zip", "3.10", "x86_64")
    with pytest.raises(UsageError, match="--arch 'ppc64le'"):
        build_package(tmp_path / "lambda.zip", "3.12", "ppc64le")
    with pytest.raises(UsageError, match="not a directory"):
        build_package(tmp_path / "lambda.zip", "3.12", "x86_64", tmp_path / "nowhere")


def test_platform_tags_follow_the_runtime_glibc() -> None:
    al2023 = deploy_package.platforms("3.12", "x86_64")
    assert al2023[0] == "manylinux_2_34_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(al2023)
    al2 = deploy_package.platforms("3.11", "arm64")
    assert al2[0] == "manylinux_2_26_aarch64" and al2[-1] == "manylinux2014_aarch64"
    assert "manylinux_2_28_aarch64" not in al2


# -- the command -------------------------------------------------------------------------------------------------
def test_command_prints_budget_sha256_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Neither a checkout nor an installed wheel: fleetwarden==<version> comes from the wheel directory.
    monkeypatch.setattr(deploy, "source_root", lambda: None)
    monkeypatch.setattr(deploy_package, "installed_distribution", lambda: None)
    output = tmp_path / "fw.zip"
    wheels = wheel_set(tmp_path / "wheels")
    result = CliRunner().invoke(
        main, ["deploy", "package", "--output", str(output), "--arch", OTHER_ARCH, "--wheel-dir", str(wheels)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"sha256: {hashlib.sha256(output.read_bytes()).hexdigest()}" in lines
    assert f"path: {output.resolve()}" in lines
    assert any("within the budget of 150.0 MB (Lambda's limit: 250.0 MB" in line for line in lines)
    assert any(line.startswith("import check: skipped") for line in lines)
    assert f"from fleetwarden=={__version__} in {wheels.resolve()}" in lines[0]


def test_command_exit_2_for_bad_options_and_missing_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    bad_python = runner.invoke(main, ["deploy", "package", "--python", "3.10"])
    assert bad_python.exit_code == 2 and "'3.10' is not one of '3.11', '3.12', '3.13'" in bad_python.output
    bad_arch = runner.invoke(main, ["deploy", "package", "--arch", "ppc64le"])
    assert bad_arch.exit_code == 2 and "'ppc64le' is not one of 'x86_64', 'arm64'" in bad_arch.output

    monkeypatch.setattr(deploy, "source_root", lambda: None)
    monkeypatch.setattr(deploy_package, "installed_distribution", lambda: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = runner.invoke(main, ["deploy", "package", "--output", str(tmp_path / "x.zip"), "--wheel-dir", str(empty)])
    assert missing.exit_code == 2, missing.output
    assert f"error: installing fleetwarden=={__version__} for Lambda: no wheel of fleetwarden" in missing.output
    assert not (tmp_path / "x.zip").exists()


def test_command_exit_2_when_the_index_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "source_root", lambda: None)
    monkeypatch.setattr(deploy_package, "installed_distribution", lambda: None)
    # An index that refuses connections, and none of this machine's pip configuration (mirrors, find-links).
    for key, value in {
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "1",  # pip reports a connection error only when it retries
        "PIP_TIMEOUT": "2",
    }.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, ["deploy", "package", "--output", str(tmp_path / "x.zip")])
    assert result.exit_code == 2, result.output
    assert "because the package index is unreachable (offline?)" in result.output
    assert "--wheel-dir" in result.output
    assert not (tmp_path / "x.zip").exists()


def test_command_choices_are_the_modules() -> None:
    command = main.commands["deploy"].commands["package"]  # type: ignore[attr-defined]
    choices = {p.name: list(p.type.choices) for p in command.params if hasattr(p.type, "choices")}
    assert choices == {"python_version": list(PYTHONS), "arch": list(ARCHES)}


# -- deploy from a wheel install ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel (built from a clean copy of the sources), unzipped: what `pip install` would put in
    site-packages."""
    build = tmp_path_factory.mktemp("wheel")
    try:
        wheel = deploy_package.build_fleetwarden_wheel(ROOT, build)
    except UsageError as exc:
        pytest.skip(f"cannot build the project's wheel here (its build backend comes from the package index): {exc}")
    site = build / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def render_from(site: Path, kind: str, cwd: Path) -> str:
    """`fleetwarden deploy render --kind KIND` with the unzipped wheel first on sys.path, run outside the checkout."""
    code = (
        "import sys\n"
        "site = sys.argv[1]\n"
        "sys.path.insert(0, site)\n"
        "import fleetwarden, fleetwarden.deploy\n"
        "assert fleetwarden.__file__.startswith(site), fleetwarden.__file__\n"
        "assert fleetwarden.deploy.source_root() is None\n"
        "from fleetwarden.cli import main\n"
        "main(['deploy', 'render', '--kind', sys.argv[2]])\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(site), kind], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wheel_ships_every_state_machine(unpacked_wheel: Path) -> None:
    shipped = {p.name for p in (unpacked_wheel / "fleetwarden" / "statemachines").glob("*.asl.json")}
    in_source = {p.name for p in (ROOT / "src" / "fleetwarden" / "statemachines").glob("*.asl.json")}
    assert "scan-window.asl.json" in shipped
    assert shipped == in_source


@pytest.mark.parametrize("kind", ["hub", "member", "billing"])
def test_deploy_render_from_a_wheel_install_outside_the_checkout(
    unpacked_wheel: Path, kind: str, tmp_path: Path
) -> None:
    rendered = render_from(unpacked_wheel, kind, cwd=tmp_path)
    assert rendered == (ROOT / deploy.TEMPLATE_FILES[kind]).read_text()


def test_deploy_package_from_a_wheel_install_packs_the_installed_files(unpacked_wheel: Path, tmp_path: Path) -> None:
    # The installed fleetwarden (not a checkout) is packed as installed, its requirements from the wheel directory:
    # fake wheels of the same names, at the lowest versions the requirements allow.
    metadata = (unpacked_wheel / f"fleetwarden-{__version__}.dist-info" / "METADATA").read_text()
    requirements = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist")]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for requirement in requirements:
        if "extra" in requirement.partition(";")[2]:
            continue
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        lowest = re.search(r">=\s*([0-9][0-9.]*)", requirement)
        fake_wheel(wheels, name, lowest.group(1) if lowest else "1.0", {f"fake_{name.lower()}.py": ""}, [])
    output = tmp_path / "installed.zip"
    code = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from fleetwarden.cli import main\n"
        "main(['deploy', 'package', '--arch', sys.argv[2], '--wheel-dir', sys.argv[3], '--output', sys.argv[4]])\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, str(unpacked_wheel), OTHER_ARCH, str(wheels), str(output)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"from the installed fleetwarden {__version__} ({unpacked_wheel / 'fleetwarden'})" in done.stdout
    entries = set(names(output))
    assert {"fake_boto3.py", "fake_pydantic.py", "fleetwarden/deploy_package.py"} <= entries
    assert "fleetwarden/statemachines/scan-window.asl.json" in entries
    assert f"fleetwarden-{__version__}.dist-info/METADATA" in entries
    assert not [e for e in entries if e.startswith(("fleetwarden/emulator/", "bin/", "moto"))]
    assert f"fleetwarden-{__version__}.dist-info/direct_url.json" not in entries
