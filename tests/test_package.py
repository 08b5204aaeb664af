"""`medalist package`, the offline notebook run in a fresh environment, and `medalist submit`.

The offline run is simulated as Kaggle runs it: a new virtual environment whose preinstalled
packages are this environment's (torch and the rest, as in the Kaggle image) but not medalist,
which is installed only from the bundle with ``pip install --no-index``. The notebook is executed
with nbclient in that environment, with a ``kaggle/input`` folder holding the bundle and the
competition's test files (no train.csv, no outputs/), and its submission must be byte for byte
the one made locally. `medalist submit` is tested up to the kaggle client, which is replaced at
its boundary (:func:`medalist.offline.submit.client`): there is no network here.
"""

import hashlib
import inspect
import json
import logging
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import bake, working_directory
from medalist.errors import ConfigError, DataError, SubmissionError
from medalist.offline import notebook
from medalist.offline import submit as submit_module
from medalist.offline.predict import predict_experiment, read_manifest, run_bundle
from medalist.offline.scan import PICKLED, check_bundle, is_pickle
from medalist.offline.timing import estimate
from support.bundles import kaggle_overrides
from support.hub_cache import TEXT_REPO, seed_text
from support.tiny_text import make_backbone

REPO = Path(__file__).resolve().parents[1]
DATASET = "tester/digits-offline-test"
BUNDLE = Path("package/digits-offline-test")
PROBE = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "offline-probe"
version = "1.2.3"

[tool.setuptools.packages.find]
where = ["src"]
"""


def _run(*args: str) -> None:
    assert main([*args]) == 0, args


@pytest.fixture(scope="module")
def packaged(tiny_template, tmp_path_factory) -> Path:
    """The tiny project trained (1 epoch), inferred, submitted and packaged, with one extra wheel
    (a small local package standing in for a dependency the Kaggle image lacks)."""
    root = tmp_path_factory.mktemp("packaged")
    probe = root / "offline-probe"
    (probe / "src" / "offline_probe").mkdir(parents=True)
    (probe / "pyproject.toml").write_text(PROBE)
    (probe / "src" / "offline_probe" / "__init__.py").write_text("VALUE = 42\n")
    project = root / "digits"
    shutil.copytree(tiny_template, project)
    config = ["-c", "configs/tiny.yaml", "train.epochs=1"]
    with working_directory(project):
        for stage in ("folds", "train", "infer", "submission"):
            _run(stage, *config)
        _run(
            "package",
            *config,
            f"kaggle.wheels=[{probe}]",
            f"kaggle.dataset_id={DATASET}",
            "kaggle.timing_rows=16",
        )
    return project


# ------------------------------------------------------------------------------ bundle contents


def _data_hashes(project: Path) -> set[str]:
    return {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (project / "data").rglob("*")
        if p.is_file()
    }


def test_bundle_holds_what_the_notebook_needs(packaged):
    bundle = packaged / BUNDLE
    manifest = read_manifest(bundle)  # every listed file present, in full
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert files == set(manifest["files"]) | {"medalist-bundle.json"}
    assert manifest["install"] == ["medalist==0.1.0", "digits==0.1.0", "offline_probe==1.2.3"]
    assert {"config.yaml", "dataset-metadata.json", "timing.json", "folds/folds.json"} <= files
    experiment = manifest["experiments"]["tiny"]
    # Each fold ships the weights that scored its OOF rows (no EMA, SWA or snapshots here).
    assert experiment["weights"] == {
        fold: [f"outputs/tiny/fold{fold}/model.safetensors"] for fold in ("0", "1", "2")
    }
    for files in experiment["weights"].values():  # the trained files, byte for byte
        assert (bundle / files[0]).read_bytes() == (packaged / files[0]).read_bytes()
    assert experiment["paths"] == {"model.pretrained_path": None}
    assert experiment["settings"] == {"model.pretrained": False}  # no hub cache on Kaggle
    assert json.loads((bundle / "dataset-metadata.json").read_text()) == {
        "title": "digits medalist bundle",
        "id": DATASET,
        "licenses": [{"name": "CC0-1.0"}],
    }
    timing = json.loads((bundle / "timing.json").read_text())
    assert timing["test_rows"] == len(pd.read_csv(packaged / "data" / "test.csv"))
    assert len(timing["models"]) == 3 and timing["fits"] is True
    kernel = json.loads((packaged / "package" / "notebook" / "kernel-metadata.json").read_text())
    assert kernel["dataset_sources"] == [DATASET] and kernel["competition_sources"] == ["digits"]
    assert kernel["enable_internet"] is False
    # The project's own entry point is the library's.
    assert (packaged / "inference" / "predict.py").read_text() == notebook.script()


def test_bundle_has_no_data_credentials_or_pickles(packaged):
    bundle = packaged / BUNDLE
    data = _data_hashes(packaged)
    for path in (p for p in bundle.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        assert hashlib.sha256(blob).hexdigest() not in data, path
        assert path.suffix not in PICKLED and not is_pickle(blob[:2]), path
        assert path.suffix not in {".csv", ".parquet", ".png", ".jpg"}, path
        assert path.name != "kaggle.json" and b'"key"' not in blob, path
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    content = archive.read(member)
                    assert hashlib.sha256(content).hexdigest() not in data, (path, member)
                    assert Path(member).suffix not in PICKLED, (path, member)
                    assert not is_pickle(content[:2]), (path, member)
    train_ids = set(pd.read_csv(packaged / "data" / "train.csv")["image"])
    names = {p.name for p in bundle.rglob("*")}
    assert not names & train_ids
    check_bundle(bundle, packaged / "data")  # the stage's own check agrees


def test_repository_entry_point_is_the_generated_one():
    assert (REPO / "inference" / "predict.py").read_text() == notebook.script()
    expected = nbformat.writes(notebook.notebook()) + "\n"
    assert (REPO / "inference" / "predict.ipynb").read_text() == expected
    source = [cell.source for cell in notebook.notebook().cells if cell.cell_type == "code"]
    assert any("--no-index" in s and "--find-links" in s for s in source)


# ---------------------------------------------------------------------------- the offline run


def _kaggle_image(folder: Path) -> Path:
    """This environment's packages, less medalist and the bundle's: the Kaggle image's part."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    skip = ("medalist", "__editable__", "digits", "offline_probe")
    for entry in site.iterdir():
        if not entry.name.lower().startswith(skip) and entry.suffix != ".pth":
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> Path:
    """A new virtual environment with the 'image' on its path and no medalist."""
    root = tmp_path_factory.mktemp("fresh")
    image = _kaggle_image(root / "kaggle-image")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "kaggle_image.pth").write_text(f"{image}\n")
    missing = subprocess.run([python, "-c", "import medalist"], capture_output=True)
    assert missing.returncode != 0  # medalist comes from the bundle or not at all
    return python


def _kernel(folder: Path, python: Path, monkeypatch) -> str:
    spec = folder / "kernels" / "kaggle-sim"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "kaggle-sim", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(folder))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(folder / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(folder / "ipython"))
    return "kaggle-sim"


def _competition_files(project: Path, folder: Path) -> Path:
    """What Kaggle mounts for the competition at scoring time; train.csv is left out on purpose."""
    folder.mkdir(parents=True)
    for name in ("test.csv", "sample_submission.csv"):
        shutil.copy(project / "data" / name, folder / name)
    shutil.copytree(project / "data" / "test_images", folder / "test_images")
    return folder


@pytest.mark.slow
def test_notebook_offline_in_a_fresh_environment(packaged, fresh_python, tmp_path, monkeypatch):
    kaggle = tmp_path / "kaggle"
    shutil.copytree(packaged / BUNDLE, kaggle / "input" / "digits-offline-test")
    _competition_files(packaged, kaggle / "input" / "digits")
    (kaggle / "working").mkdir()
    kernel = _kernel(tmp_path / "jupyter", fresh_python, monkeypatch)
    for name, value in {
        "MEDALIST_PROFILE": "kaggle",
        "MEDALIST_INPUT": kaggle / "input",
        "MEDALIST_WORKING": kaggle / "working",
        "PIP_NO_INDEX": "1",  # the notebook must need no index, like Kaggle without internet
    }.items():
        monkeypatch.setenv(name, str(value))
    nb = nbformat.read(packaged / "package" / "notebook" / "predict.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name=kernel,
        resources={"metadata": {"path": str(kaggle / "working")}},
    )
    client.execute()

    written = kaggle / "working" / "submission.csv"
    local = packaged / "submissions" / "tiny.csv"
    assert written.read_bytes() == local.read_bytes()
    offline = pd.read_parquet(kaggle / "working" / "predictions" / "tiny.parquet")
    expected = pd.read_parquet(packaged / "outputs" / "tiny" / "test.parquet")
    pd.testing.assert_frame_equal(offline, expected, check_exact=True)
    report = json.loads((kaggle / "working" / "offline.json").read_text())
    assert report["profile"] == "kaggle" and report["rows"] == len(expected)
    # medalist and the extra wheel were installed into the fresh environment, from the bundle.
    where = subprocess.run(
        [fresh_python, "-c", "import medalist, offline_probe; print(medalist.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(fresh_python.parents[1]) in where


@pytest.mark.slow
def test_script_with_the_local_profile(packaged, fresh_python, tmp_path):
    project = tmp_path / "digits"
    shutil.copytree(packaged, project)
    shutil.rmtree(project / "outputs")  # the project's weights: the bundle has its own copies
    (project / "data" / "train.csv").unlink()  # the run must not need it
    env = {"MEDALIST_PROFILE": "local", "PIP_NO_INDEX": "1", "HOME": str(tmp_path)}
    env |= {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PIP_NO_CACHE_DIR": "1"}
    subprocess.run(
        [fresh_python, "inference/predict.py"], cwd=project, env=env, check=True, timeout=600
    )
    written = project / "outputs" / "offline" / "submission.csv"
    assert written.read_bytes() == (packaged / "submissions" / "tiny.csv").read_bytes()


# ------------------------------------------------------------------------------------- timing


def test_time_estimate_extrapolates_and_warns_over_the_limit(packaged, caplog):
    bundle = packaged / BUNDLE
    manifest = read_manifest(bundle)
    with caplog.at_level(logging.WARNING):
        report, samples = estimate(
            bundle, manifest["experiments"], packaged / "data", 8, 10_000, limit_hours=1e-9
        )
    assert report["fits"] is False and "does NOT fit" in caplog.text
    expected = sum(
        m["load_seconds"] + m["predict_seconds"] * 10_000 / m["rows"] for m in report["models"]
    )
    assert report["estimated_seconds"] == pytest.approx(expected, abs=0.01)
    assert [m["rows"] for m in report["models"]] == [8, 8, 8]
    test, values = samples["tiny"]
    assert values.shape == (8, 10) and len(test) == 8


# ----------------------------------------------------------------------------------- ensemble


@pytest.mark.slow
def test_packaged_ensemble_reproduces_the_local_blend(packaged, tmp_path):
    project = tmp_path / "digits"
    shutil.copytree(packaged, project)
    config = ["-c", "configs/tiny.yaml", "train.epochs=1"]
    second = [*config, "train.experiment=tiny_b", "train.seed=7"]
    members = ["ensemble.experiments=[tiny,tiny_b]", "ensemble.method=weighted"]
    with working_directory(project):
        _run("train", *second)
        _run("infer", *second)
        _run("ensemble", *config, *members)
        _run("package", *config, *members, "kaggle.ensemble=blend", "kaggle.timing_rows=4")
        bundle = Path("package/digits-medalist")  # the default dataset id's slug
        manifest = read_manifest(bundle)
        assert sorted(manifest["experiments"]) == ["tiny", "tiny_b"]
        assert manifest["ensemble"]["method"] == "weighted"
        written = run_bundle(bundle, "local", environ={})
        blended = pd.read_parquet(Path("outputs/offline/predictions/ensemble__blend.parquet"))
        expected = pd.read_parquet("outputs/ensemble/blend/test.parquet")
        pd.testing.assert_frame_equal(blended, expected, check_exact=True)
        assert written.read_bytes() == Path("submissions/blend.csv").read_bytes()


def test_package_ships_the_views_of_the_last_infer(packaged, tmp_path, caplog):
    """infer run with TTA after training: the bundle predicts with those views (infer.json), not
    with the training config's, and reproduces test.parquet; a damaged infer.json is named."""
    project = tmp_path / "digits"
    shutil.copytree(packaged, project, ignore=shutil.ignore_patterns("package"))
    config = ["-c", "configs/tiny.yaml", "train.epochs=1", "kaggle.timing_rows=4"]
    config.append(f"kaggle.dataset_id={DATASET}")
    with working_directory(project):
        _run("infer", *config, "infer.tta=[identity, hflip]", "infer.tta_merge=geometric")
        _run("package", *config)  # checks the bundle against outputs/tiny/test.parquet
        manifest = read_manifest(Path(BUNDLE))
        views = {"tta": ["identity", "hflip"], "tta_merge": "geometric", "precision": "fp32"}
        assert manifest["experiments"]["tiny"]["infer"] == views
        run_bundle(BUNDLE, "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/tiny.parquet")
        local = pd.read_parquet("outputs/tiny/test.parquet")
        assert np.array_equal(offline.to_numpy(), local.to_numpy())
        # An infer.json from before infer.precision existed: it predicted in fp32.
        Path("outputs/tiny/infer.json").write_text(
            json.dumps({k: views[k] for k in ("tta", "tta_merge")})
        )
        _run("package", *config)
        assert read_manifest(Path(BUNDLE))["experiments"]["tiny"]["infer"] == views
        Path("outputs/tiny/infer.json").write_text('{"tta": "identity"}')
        with caplog.at_level(logging.ERROR):
            assert main(["package", *config]) == 2
    assert "infer.json: not an infer settings file" in caplog.text


def test_package_ships_snapshots_and_the_bundle_averages_them(packaged, tmp_path):
    """A snapshot ensemble (tricks.schedule.restarts): the bundle holds every snapshot of a fold
    and predicts with their mean, which is infer's test.parquet (the packaging check compares
    them too), and not what one snapshot predicts."""
    project = tmp_path / "digits"
    shutil.copytree(packaged, project, ignore=shutil.ignore_patterns("package"))
    config = ["-c", "configs/tiny.yaml", "train.epochs=1", "train.folds=[0]"]
    config += ["train.experiment=snap", "tricks.schedule.restarts=1", "kaggle.timing_rows=8"]
    with working_directory(project):
        for stage in ("train", "infer", "package"):
            _run(stage, *config)
        bundle = Path("package/digits-medalist")
        entry = read_manifest(bundle)["experiments"]["snap"]
        snapshots = [f"outputs/snap/fold0/snapshot{c}.safetensors" for c in (0, 1)]
        assert entry["weights"] == {"0": snapshots}
        for relative in snapshots:
            assert (bundle / relative).read_bytes() == Path(relative).read_bytes()
        run_bundle(bundle, "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/snap.parquet")
        local = pd.read_parquet("outputs/snap/test.parquet")
        assert np.array_equal(offline.to_numpy(), local.to_numpy())
        _, _, both = predict_experiment(bundle, entry, Path("data"), rows=8)
        alone = {**entry, "weights": {"0": snapshots[1:]}}
        _, _, last = predict_experiment(bundle, alone, Path("data"), rows=8)
    assert not np.allclose(both, last, atol=1e-4)


# ------------------------------------------------------------------------------- refusals


def test_package_refuses_a_bundle_that_predicts_other_values(packaged, tmp_path, caplog):
    """The timed sample's predictions must be the experiment's test.parquet: here that table no
    longer is what its weights predict, and nothing is packaged."""
    project = tmp_path / "digits"
    shutil.copytree(packaged, project, ignore=shutil.ignore_patterns("package"))
    config = ["-c", "configs/tiny.yaml", "train.epochs=1", "kaggle.timing_rows=4"]
    with working_directory(project):
        table = pd.read_parquet("outputs/tiny/test.parquet")
        columns = [c for c in table.columns if c.startswith("p_")]
        table.loc[2, columns] = np.roll(
            table.loc[2, columns].to_numpy(), 1
        )  # one row, in the sample
        table.to_parquet("outputs/tiny/test.parquet")
        with caplog.at_level(logging.ERROR):
            assert main(["package", *config]) == 2
        assert not list(Path("package").glob("digits-medalist*"))  # nothing left in place
    assert "the bundle predicts other values than" in caplog.text
    assert "outputs/tiny/test.parquet" in caplog.text


def test_package_refuses_what_cannot_ship(packaged, tmp_path):
    project = tmp_path / "digits"
    shutil.copytree(packaged, project, ignore=shutil.ignore_patterns("package"))
    from medalist.offline.package import run

    with working_directory(project):
        two = resolve_config("configs/tiny.yaml", ["kaggle.experiments=[tiny,other]"])
        with pytest.raises(ConfigError, match="kaggle.ensemble"):
            run(two)
        missing = resolve_config("configs/tiny.yaml", ["train.experiment=never_trained"])
        with pytest.raises(DataError, match="never_trained"):
            run(missing)
        Path("outputs/ensemble/stacked").mkdir(parents=True)
        for name in ("weights.json", "task.json"):
            Path("outputs/ensemble/stacked", name).write_text("{}")
        Path("outputs/ensemble/stacked/ensemble.yaml").write_text(
            "method: stack\nexperiments: [tiny]\n"
        )
        stack = resolve_config("configs/tiny.yaml", ["kaggle.ensemble=stacked"])
        with pytest.raises(ConfigError, match="pickling"):
            run(stack)
        assert not Path("package").exists()  # refused before any work
        # Credentials in the project's package data: built into its wheel, refused by the scan.
        Path("src/digits/kaggle.json").write_text('{"username": "someone", "key": "x"}')
        with open("pyproject.toml", "a") as handle:
            handle.write('\n[tool.setuptools.package-data]\ndigits = ["*.json"]\n')
        leaky = resolve_config("configs/tiny.yaml", ["kaggle.timing_rows=0"])
        with pytest.raises(DataError, match="credentials"):
            run(leaky)
        assert not list(Path("package").glob("digits-medalist*"))  # nothing left in place
    with pytest.raises(ConfigError, match="kaggle.dataset_id"):
        resolve_config(None, ["kaggle.dataset_id=no-owner"])


def test_kernel_metadata_names_the_card():
    """enable_gpu alone may land on any card: kaggle.accelerator sets machine_shape; a name
    Kaggle would silently swap for a P100 is refused, as is a card with kaggle.gpu false."""
    from medalist.offline.package import _kernel_metadata

    plain = _kernel_metadata(resolve_config(None, []))
    assert plain["enable_gpu"] is True and "machine_shape" not in plain
    t4 = _kernel_metadata(resolve_config(None, ["kaggle.accelerator=NvidiaTeslaT4"]))
    assert t4["enable_gpu"] is True and t4["machine_shape"] == "NvidiaTeslaT4"
    with pytest.raises(ConfigError, match="kaggle.accelerator"):
        resolve_config(None, ["kaggle.accelerator=GpuT4x2"])
    with pytest.raises(ConfigError, match="kaggle.accelerator"):
        resolve_config(None, ["kaggle.accelerator=NvidiaTeslaP100", "kaggle.gpu=false"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("weights.pt", None, "pickled"),
        ("model.json", b"\x80\x04\x95 pickled bytes", "pickle"),
        ("kaggle.json", b"{}", "credentials"),
        ("notes.txt", b'{"username": "u", "key": "0123456789abcdef0123456789abcdef"}', "key"),
        ("train.csv", b"id,label\n1,2\n", "not a type"),
        ("image.png", b"\x89PNG", "not a type"),
        ("broken.safetensors", b"\xff" * 12, "safetensors"),
    ],
)
def test_scan_refuses(tmp_path, name, content, message):
    folder = tmp_path / "bundle"
    folder.mkdir()
    if content is None:
        torch.save({"w": torch.zeros(2)}, folder / name)
    else:
        (folder / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        check_bundle(folder)


def test_scan_refuses_a_copy_of_the_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.json").write_text('{"1": "cat"}')
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "vocab.json").write_text('{"1": "cat"}')
    with pytest.raises(DataError, match="copy of a competition data file"):
        check_bundle(folder, data)
    (folder / "vocab.json").write_text('{"1": "dog"}')
    check_bundle(folder, data)


# ------------------------------------------------------------------------------------- submit


class FakeApi:
    """Stands in for kaggle.api.kaggle_api_extended.KaggleApi: records what would be sent."""

    def __init__(self):
        self.calls = []

    def competition_submit(self, file_name, message, competition, quiet=False, sandbox=False):
        self.calls.append(("competition_submit", file_name, message, competition))

    def competition_submit_code(
        self, file_name, message, competition=None, kernel=None, kernel_version=None, quiet=False
    ):
        self.calls.append(("competition_submit_code", file_name, message, kernel, kernel_version))


@pytest.fixture
def fake_kaggle(monkeypatch):
    api = FakeApi()
    monkeypatch.setattr(submit_module, "client", lambda: api)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret0123456789secret0123456789")
    return api


def test_submit_validates_then_sends_with_experiment_and_cv(packaged, fake_kaggle, caplog):
    cv = json.loads((packaged / "outputs" / "tiny" / "metrics.json").read_text())["cv"]
    with working_directory(packaged), caplog.at_level(logging.DEBUG):
        assert main(["submit", "-c", "configs/tiny.yaml", "kaggle.code_competition=false"]) == 0
        sent = fake_kaggle.calls.pop()
        assert sent[0] == "competition_submit" and sent[1] == "submissions/tiny.csv"
        assert sent[2] == f"tiny CV accuracy {cv['accuracy']:.5f}" and sent[3] == "digits"
        assert main(["submit", "-c", "configs/tiny.yaml", "--kernel-version", "3"]) == 0
        sent = fake_kaggle.calls.pop()
        assert sent[0] == "competition_submit_code" and sent[1] == "submission.csv"
        assert sent[3:] == ("INSERT_USERNAME/digits-medalist-inference", 3)
        # A code competition names the notebook version; nothing is sent without it.
        assert main(["submit", "-c", "configs/tiny.yaml"]) == 2
    assert "secret0123456789" not in caplog.text and not fake_kaggle.calls


def test_submit_refuses_an_invalid_file_before_the_client(packaged, fake_kaggle, tmp_path):
    bad = tmp_path / "bad.csv"
    sub = pd.read_csv(packaged / "submissions" / "tiny.csv")
    sub.iloc[1:].to_csv(bad, index=False)  # a row missing
    cfg = resolve_config(packaged / "configs" / "tiny.yaml", ["kaggle.code_competition=false"])
    with working_directory(packaged), pytest.raises(SubmissionError, match="rows"):
        submit_module.run(cfg, file=bad)
    assert fake_kaggle.calls == []


def test_fake_client_matches_the_real_client_signatures():
    from kaggle.api.kaggle_api_extended import KaggleApi

    for name in ("competition_submit", "competition_submit_code"):
        real = inspect.signature(getattr(KaggleApi, name))
        fake = inspect.signature(getattr(FakeApi, name))
        assert list(real.parameters) == list(fake.parameters), name
    real = inspect.signature(KaggleApi.competition_submit_code)
    real.bind(None, file_name="f", message="m", competition="c", kernel="o/k", kernel_version=1)


def test_offline_predictions_equal_infer_in_process(packaged):
    """The offline predictions (in-process, local profile) equal infer's, value for value."""
    with working_directory(packaged):
        run_bundle(BUNDLE, "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/tiny.parquet")
        local = pd.read_parquet("outputs/tiny/test.parquet")
    assert np.array_equal(offline.to_numpy(), local.to_numpy())


# ------------------------------------------------------------------- a hub-named text backbone

TEXT_WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
HUB_TEXT = f"""\
text:
  backbone: {TEXT_REPO}
  max_length: 32
folds:
  n_splits: 2
train:
  experiment: hub_text
  epochs: 1
  folds: [0]
  batch_size: 8
  num_workers: 0
  progress: false
"""


def test_hub_named_text_backbone_ships_as_a_folder(tmp_path, monkeypatch):
    """The snapshot of a hub id travels as backbones/<name>/, and the bundle predicts with the
    hub cache gone, as infer did with it, bit for bit. A full fine-tune's fold file holds the
    whole model: the folder ships without its weights, the model built from its config."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    texts = [f"{TEXT_WORDS[i % 6]} {TEXT_WORDS[(i + 1) % 6]} {i}" for i in range(20)]
    snapshot = seed_text(cache, make_backbone(tmp_path / "bert", texts, hidden=16))
    project = bake(tmp_path, {"competition_name": "Hub", "modality": "text", "target_columns": "y"})
    rows = pd.DataFrame({"id": range(20), "text": texts, "y": ["a", "b"] * 10})
    rows[:14].to_csv(project / "data" / "train.csv", index=False)
    rows[14:][["id", "text"]].to_csv(project / "data" / "test.csv", index=False)
    rows[14:][["id", "y"]].assign(y="a").to_csv(project / "data/sample_submission.csv", index=False)
    (project / "configs" / "hub.yaml").write_text(HUB_TEXT)
    config = ["-c", "configs/hub.yaml"]
    kaggle = kaggle_overrides(tmp_path)
    with working_directory(project):
        for stage in ("folds", "train", "infer"):
            _run(stage, *config)
        _run("package", *config, *kaggle, "kaggle.timing_rows=0", f"kaggle.dataset_id={DATASET}")
        bundle = BUNDLE
        manifest = read_manifest(bundle)
        backbone = manifest["experiments"]["hub_text"]["paths"]["text.backbone"]
        assert backbone == "backbones/tiny-bert/config.json"
        shipped = {p.name for p in (bundle / "backbones" / "tiny-bert").iterdir()}
        assert shipped == {p.name for p in snapshot.iterdir()} - {"model.safetensors"}
        shutil.rmtree(cache)
        run_bundle(bundle, "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/hub_text.parquet")
        local = pd.read_parquet("outputs/hub_text/test.parquet")
    assert np.array_equal(offline.to_numpy(), local.to_numpy())


# ------------------------------------------------------------------ a swap view given to infer only

WINNERS = ["winner_model_a", "winner_model_b", "winner_tie"]
SWAP_TEXT = """\
modality: text
competition:
  target_columns: [winner]
text:
  backbone: models/bert
  text_column: response_a
  pair_column: response_b
  max_length: 24
{swap}folds:
  n_splits: 2
train:
  experiment: pairs
  epochs: 1
  folds: [0]
  batch_size: 8
  num_workers: 0
  progress: false
"""
SWAP = [
    "text.swap.columns=[response_a, response_b]",
    "text.swap.classes={winner_model_a: winner_model_b}",
]
SWAP_YAML = """\
  swap:
    columns: [response_a, response_b]
    classes: {winner_model_a: winner_model_b}
"""
SWAP_VIEWS = "infer.tta=[identity, swap]"


def test_package_refuses_a_swap_view_whose_text_swap_the_shipped_config_lacks(tmp_path, caplog):
    """text.swap given to infer only: infer.json lists the swap view, the experiment's
    config.yaml (what the bundle predicts with) has no text.swap; package stops naming it, and
    packages once train (no fold retrained) and infer have run with text.swap in the config."""
    rng = np.random.default_rng(0)
    words = [" ".join(rng.choice(TEXT_WORDS, 6)) for _ in range(40)]
    rows = pd.DataFrame(
        {
            "id": range(20),
            "response_a": words[:20],
            "response_b": words[20:],
            "winner": [WINNERS[i % 3] for i in range(20)],
        }
    )
    project = tmp_path / "pairs"
    (project / "data").mkdir(parents=True)
    (project / "configs").mkdir()
    rows[:14].to_csv(project / "data" / "train.csv", index=False)
    rows[14:].drop(columns="winner").to_csv(project / "data" / "test.csv", index=False)
    rows[14:][["id", "winner"]].to_csv(project / "data" / "sample_submission.csv", index=False)
    make_backbone(project / "models" / "bert", words, hidden=16)
    (project / "configs" / "pairs.yaml").write_text(SWAP_TEXT.format(swap=""))
    config = ["-c", "configs/pairs.yaml"]
    kaggle = kaggle_overrides(tmp_path, DATASET)
    with working_directory(project):
        for stage in ("folds", "train"):
            _run(stage, *config)
        _run("infer", *config, *SWAP, SWAP_VIEWS)  # text.swap on infer's command line only
        with caplog.at_level(logging.ERROR):
            # No sample predicted at package time: nothing else would stop the bundle.
            assert main(["package", *config, *kaggle, "kaggle.timing_rows=0"]) == 2
        assert "text.swap: " in caplog.text and "lists the swap TTA view(s) ['swap']" in caplog.text
        assert "set text.swap.columns and text.swap.classes in the experiment's" in caplog.text
        assert not BUNDLE.exists()  # refused before anything was built
        # The fix the message gives: text.swap in the config, train (no fold retrained), infer.
        (project / "configs" / "pairs.yaml").write_text(SWAP_TEXT.format(swap=SWAP_YAML))
        weights = Path("outputs/pairs/fold0/model.safetensors").read_bytes()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            _run("train", *config)
        assert "fold 0: complete for this config, not retrained" in caplog.text
        assert Path("outputs/pairs/fold0/model.safetensors").read_bytes() == weights
        _run("infer", *config, SWAP_VIEWS)
        _run("package", *config, *kaggle, "kaggle.timing_rows=3")  # 3 rows as test.parquet
        assert read_manifest(BUNDLE)["experiments"]["pairs"]["infer"]["tta"] == ["identity", "swap"]
