"""The ``kaggle`` config section: the offline bundle, its notebook, its time budget, submitting."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from medalist.config.section import Section

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,48})[a-z0-9]$")
OWNED_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9](?:[a-z0-9-]{1,48})[a-z0-9]$")


class KaggleConfig(Section):
    """Offline Kaggle inference: `medalist package` (dataset + notebook) and `medalist submit`."""

    competition: str | None = Field(
        None,
        description="Kaggle competition slug (its URL name): the data at /kaggle/input/<slug> "
        "and where submit sends; null: competition.name.",
    )
    code_competition: bool = Field(
        True,
        description="Submissions are made by the notebook run offline on Kaggle (submit names "
        "the notebook version); false: submit uploads the CSV.",
    )
    experiments: list[str] = Field(
        default_factory=list,
        description="Experiments to package; empty: the ensemble's members, else train.experiment.",
    )
    ensemble: str | None = Field(
        None,
        description="An ensemble under outputs/ensemble/<name>/ the notebook applies to its "
        "members' predictions (any method but stack); null: one experiment.",
    )
    dataset_id: str | None = Field(
        None,
        description="'owner/slug' of the Kaggle dataset; null: INSERT_USERNAME/<competition>-medalist "
        "(set the owner before uploading).",
    )
    dataset_title: str | None = Field(
        None, description="Dataset title, 6-50 characters; null: '<competition> medalist bundle'."
    )
    dataset_license: str = Field("CC0-1.0", description="License named in dataset-metadata.json.")
    notebook_id: str | None = Field(
        None,
        description="'owner/slug' of the inference notebook (kernel-metadata.json, submit); null: "
        "<dataset owner>/<competition>-medalist-inference.",
    )
    gpu: bool = Field(True, description="The notebook asks Kaggle for a GPU.")
    accelerator: Literal["NvidiaTeslaT4", "NvidiaTeslaP100"] | None = Field(
        None,
        description="The notebook's card (kernel-metadata.json machine_shape): NvidiaTeslaT4 (two "
        "T4s) or NvidiaTeslaP100; null: whichever GPU Kaggle gives (enable_gpu alone). Kaggle "
        "silently swaps a name it does not know for a P100, hence only these.",
    )
    output_dir: str = Field(
        "package",
        description="The dataset is written to <output_dir>/<dataset slug>/, the notebook to "
        "<output_dir>/notebook/.",
    )
    wheels: list[str] = Field(
        default_factory=list,
        description="Packages the Kaggle image lacks, bundled as wheels (installed without their "
        "dependencies): a requirement (name==version), a .whl file or a project folder.",
    )
    project_wheel: bool = Field(
        True, description="Also bundle this project's own package (pyproject.toml in the project)."
    )
    merge_adapters: bool = Field(
        False,
        description="Ship each weight file of a LoRA experiment as the whole model, its adapters "
        "merged into the base (W + (alpha / r) B A): it predicts faster and needs no peft "
        "offline, but the bundle holds a full copy of the backbone per fold weight file (besides "
        "the base, which builds the model) instead of a few MB of adapters; predictions equal "
        "infer's up to float rounding. Not with text.lora.quantize.",
    )
    medalist_wheel: str | None = Field(
        None,
        description="A medalist wheel file to bundle; null: built from the medalist source "
        "checkout that is installed.",
    )
    time_limit_hours: float = Field(
        9.0, gt=0, description="The competition's limit on the notebook's run time."
    )
    test_rows: int | None = Field(
        None,
        ge=1,
        description="Rows of the hidden test set the notebook will predict; null: data/test.csv's.",
    )
    timing_rows: int = Field(
        64,
        ge=0,
        description="Test rows timed through every packaged model and view to estimate the run "
        "time; 0: no estimate.",
    )
    input_dir: str = Field(
        "/kaggle/input", description="kaggle profile: where datasets and competition data mount."
    )
    working_dir: str = Field(
        "/kaggle/working", description="kaggle profile: where submission.csv is written."
    )
    local_working_dir: str = Field(
        "outputs/offline",
        description="local profile (data: competition.data_dir): where submission.csv is written.",
    )

    @model_validator(mode="after")
    def _check(self) -> KaggleConfig:
        if self.competition is not None and not SLUG.match(self.competition):
            raise ValueError(
                f"kaggle.competition: '{self.competition}' is not a Kaggle slug "
                "(lowercase letters, digits and hyphens, as in the competition's URL)"
            )
        for key in ("dataset_id", "notebook_id"):
            value = getattr(self, key)
            if value is not None and not OWNED_SLUG.match(value):
                raise ValueError(
                    f"kaggle.{key}: '{value}' must look like owner/slug (slug: 3-50 lowercase "
                    "letters, digits and hyphens)"
                )
        if self.accelerator is not None and not self.gpu:
            raise ValueError(
                f"kaggle.accelerator: '{self.accelerator}' is a GPU, but kaggle.gpu is false"
            )
        title = self.dataset_title
        if title is not None and not 6 <= len(title) <= 50:
            raise ValueError(f"kaggle.dataset_title: '{title}' must have 6 to 50 characters")
        if self.ensemble is not None and self.experiments:
            raise ValueError(
                "kaggle.experiments: leave it empty with kaggle.ensemble; the ensemble's members "
                "are the experiments packaged"
            )
        return self
