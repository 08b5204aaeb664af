"""A stand-in medalist wheel for ``medalist package`` (packaged into the bundle, never installed)
and the ``kaggle.*`` overrides that package with it."""

import zipfile
from pathlib import Path


def stub_wheel(folder: Path) -> Path:
    """``folder/medalist-0.1.0-py3-none-any.whl``, a wheel holding an empty ``medalist``."""
    wheel = folder / "medalist-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("medalist/__init__.py", "")
    return wheel


def kaggle_overrides(folder: Path, dataset_id: str | None = None, *extra: str) -> list[str]:
    """Package with a stub wheel written into ``folder``, no project wheel, as ``dataset_id``."""
    overrides = [f"kaggle.medalist_wheel={stub_wheel(folder)}", "kaggle.project_wheel=false"]
    if dataset_id is not None:
        overrides.append(f"kaggle.dataset_id={dataset_id}")
    return [*overrides, *extra]
