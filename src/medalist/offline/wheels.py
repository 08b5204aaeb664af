"""Wheels for the bundle: medalist itself, the competition project's package, and extras.

Everything is built with the ordinary client, ``pip wheel --no-deps``, from local sources where
there are any: medalist from its installed source checkout (or a wheel file given in the config),
the project from its own folder. Extras (``kaggle.wheels``) are requirements pip resolves as
configured (a wheel already in pip's cache needs no network), ``.whl`` files, or project folders.
On Kaggle they are installed without dependencies, so the image's torch and the rest stay.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import medalist
from medalist.config import Config
from medalist.errors import ConfigError, MedalistError

log = logging.getLogger(__name__)

SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def requirement(wheel: Path) -> str:
    """``name==version`` of a wheel file, from its name (``name-version-...-tag.whl``)."""
    name, version = wheel.name.split("-")[:2]
    return f"{name}=={version}"


def medalist_checkout() -> Path | None:
    """The source checkout medalist is imported from (an editable install), else None."""
    root = Path(medalist.__file__).resolve().parents[2]
    inside = root / "src" / "medalist" / "__init__.py"
    if (root / "pyproject.toml").is_file() and inside.is_file():
        return root
    return None


def check_sources(cfg: Config) -> None:
    """Refuse, before any work, a wheel source that cannot exist."""
    if cfg.kaggle.medalist_wheel is not None:
        path = Path(cfg.kaggle.medalist_wheel)
        if not path.is_file() or path.suffix != ".whl":
            raise ConfigError(f"kaggle.medalist_wheel: {path} is not a wheel file")
    elif medalist_checkout() is None:
        raise ConfigError(
            "kaggle.medalist_wheel: medalist is not installed from a source checkout here, so "
            "its wheel cannot be built; give the medalist .whl file to bundle"
        )
    for index, spec in enumerate(cfg.kaggle.wheels):
        looks_like_path = spec.endswith(".whl") or "/" in spec or spec.startswith(".")
        if looks_like_path and not Path(spec).exists():
            raise ConfigError(f"kaggle.wheels[{index}]: {spec} does not exist")


def _copy_sources(root: Path, into: Path, packages: list[str]) -> Path:
    """The files a build needs, copied so nothing (build/, *.egg-info) lands in ``root``."""
    for name in SOURCE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, into / name)
    for name in packages:
        if (root / name).is_dir():
            shutil.copytree(root / name, into / name, ignore=IGNORE)
    return into


def pip_wheel(source: str | Path, folder: Path, what: str, offline: bool) -> Path:
    """``pip wheel --no-deps`` of one source into ``folder``; returns the wheel file."""
    with tempfile.TemporaryDirectory(prefix="medalist-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        command += ["--disable-pip-version-check", "--quiet", "--wheel-dir", tmp]
        command += ["--no-index"] if offline else []
        result = subprocess.run([*command, str(source)], capture_output=True, text=True)
        built = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(built) != 1:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
            raise MedalistError(f"{what}: pip could not build a wheel of {source}:\n{tail}")
        target = folder / built[0].name
        shutil.move(built[0], target)
    return target


def _build_from(root: Path, folder: Path, what: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="medalist-src-") as tmp:
        source = _copy_sources(root, Path(tmp), ["src"])
        return pip_wheel(source, folder, what, offline=True)


def collect(cfg: Config, folder: Path, project: Path) -> list[Path]:
    """Every wheel of the bundle, written to ``folder``; medalist's first."""
    folder.mkdir(parents=True, exist_ok=True)
    k = cfg.kaggle
    if k.medalist_wheel is not None:
        wheels = [Path(shutil.copy2(k.medalist_wheel, folder))]
    else:
        wheels = [_build_from(medalist_checkout(), folder, "medalist")]
    checkout = medalist_checkout()
    is_medalist = checkout is not None and project.resolve() == checkout
    if k.project_wheel and (project / "pyproject.toml").is_file() and not is_medalist:
        wheels.append(_build_from(project, folder, "kaggle.project_wheel"))
    for index, spec in enumerate(k.wheels):
        what = f"kaggle.wheels[{index}]"
        if spec.endswith(".whl"):
            wheels.append(Path(shutil.copy2(spec, folder)))
        else:
            wheels.append(pip_wheel(spec, folder, what, offline=Path(spec).exists()))
    names = [requirement(w).split("==")[0].lower().replace("-", "_") for w in wheels]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"kaggle.wheels: {repeated} bundled twice (medalist and the project are)")
    for wheel in wheels:
        log.info("wheel: %s (%.1f MB)", wheel.name, wheel.stat().st_size / 1e6)
    return wheels
