"""The section of tables (modality: tabular): which columns are features, and the model.

A gradient-boosted model (LightGBM, XGBoost, CatBoost) is fitted on each fold's training rows
with early stopping on the fold's validation rows, through the library's own training call;
``params`` reach it unchanged, under the library's own names. ``mlp`` is a network trained by
medalist's loop, so ``train`` and ``tricks`` configure it as they do image and text models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from medalist.config.section import Section

BOOSTERS = ("lightgbm", "xgboost", "catboost")
TEXT_MODELS = ("linear", "lightgbm", "xgboost")  # the models that read sparse TF-IDF


class TfidfConfig(Section):
    """Word and character TF-IDF of each text column (scikit-learn's TfidfVectorizer), fitted on
    each fold's training rows."""

    word_ngrams: tuple[int, int] = Field((1, 2), description="Word n-gram lengths (min, max).")
    char_ngrams: tuple[int, int] | None = Field(
        (2, 5),
        description="Character n-gram lengths within word boundaries (char_wb); null: none.",
    )
    min_df: int = Field(2, ge=1, description="Terms in fewer training rows are left out.")
    max_features: int | None = Field(
        200_000, ge=1, description="The most frequent terms kept per block; null: all."
    )
    sublinear_tf: bool = Field(True, description="1 + log(count) instead of the count.")

    @model_validator(mode="after")
    def _check(self) -> TfidfConfig:
        for key in ("word_ngrams", "char_ngrams"):
            low, high = getattr(self, key) or (1, 1)
            if not 1 <= low <= high:
                raise ValueError(f"tabular.tfidf.{key}: ({low}, {high}) needs 1 <= min <= max")
        return self


class PipelineStep(Section):
    """One step of fold-safe feature engineering (fitted on each fold's training rows)."""

    name: Literal["target_encoding", "count", "frequency", "missing_indicators"] = Field(
        description="target_encoding (out of fold on the training rows), count, frequency, "
        "missing_indicators."
    )
    columns: list[str] | None = Field(
        None,
        description="Columns it encodes; null: the categorical features (missing_indicators: "
        "the features with a missing value).",
    )
    smoothing: float = Field(
        20.0, ge=0, description="target_encoding: weight m of the prior in the smoothed mean."
    )
    inner_folds: int = Field(
        5, ge=2, description="target_encoding: splits of the training rows encoding each other."
    )


class TabularConfig(Section):
    model: Literal["lightgbm", "xgboost", "catboost", "mlp", "linear"] = Field(
        "lightgbm",
        description="The learner of each fold: lightgbm, xgboost or catboost (pip install "
        "'medalist[tabular]'); mlp: a network with category embeddings trained by medalist's "
        "loop (train.*, tricks.*); linear: scikit-learn's logistic (classification) or ridge "
        "(regression) regression, on TF-IDF of tabular.text_columns and the other features.",
    )
    text_columns: list[str] = Field(
        default_factory=list,
        description="Columns of free text, turned into word and character TF-IDF "
        "(tabular.tfidf) for linear, lightgbm or xgboost; never ordinary features.",
    )
    features: list[str] | None = Field(
        None,
        description="Feature columns, in this order; null: every column of train.csv but the id "
        "and the targets (and tabular.exclude).",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Columns never used as features (when features is null)."
    )
    categorical: list[str] | None = Field(
        None,
        description="Categorical feature columns, handled natively by each library; null: the "
        "non-numeric feature columns. Categories are those of the fold's training rows; one "
        "unseen there is treated as missing, and counted in the log.",
    )
    oof_features: list[str] = Field(
        default_factory=list,
        description="Experiments whose predictions become features: their OOF predictions for "
        "train rows (trained on the same folds), their test predictions for test rows; columns "
        "'<experiment>.<prediction column>'.",
    )
    pipeline: list[PipelineStep] = Field(
        default_factory=list,
        description="Feature engineering steps in order, each adding columns '<column>.<step>' "
        "(fitted per fold and saved with its model): target_encoding, count, frequency, "
        "missing_indicators.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the library as it names them (lightgbm.train params, xgboost.train "
        "params, CatBoost params), over medalist's defaults: the objective for the task, the "
        "learning rate 0.05, the seed train.seed. GPU: device: gpu (lightgbm), device: cuda "
        "(xgboost), task_type: GPU (catboost). LightGBM and XGBoost use the seed only when they "
        "subsample (bagging_fraction with bagging_freq, feature_fraction; subsample, "
        "colsample_bytree): without, train.seeds gives identical runs.",
    )
    rounds: int = Field(
        10000,
        ge=1,
        description="Most boosting rounds (num_boost_round, CatBoost iterations); a full fit "
        "(train.folds [-1]) has no validation rows and trains them all.",
    )
    early_stopping: int = Field(
        100,
        ge=0,
        description="Stop when the validation loss has not improved for this many rounds and keep "
        "the best round (the CV is then a little optimistic, as with train.keep best); 0: train "
        "every round.",
    )

    tfidf: TfidfConfig = Field(
        default_factory=lambda: TfidfConfig(), description="linear: the text columns' TF-IDF."
    )
    hidden: list[int] = Field(
        default_factory=lambda: [256, 128],
        description="mlp: units of each hidden layer (Linear, LayerNorm, SiLU, dropout).",
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="mlp: dropout after each hidden layer.")

    @property
    def boosted(self) -> bool:
        """Whether the model is a GBDT fitted by its library (not by medalist's loop)."""
        return self.model in BOOSTERS

    @model_validator(mode="after")
    def _check(self) -> TabularConfig:
        if any(units < 1 for units in self.hidden):
            raise ValueError(f"tabular.hidden: {self.hidden}: every layer needs >= 1 unit")
        if self.text_columns and self.model not in TEXT_MODELS:
            raise ValueError(
                f"tabular.text_columns: TF-IDF text feeds {list(TEXT_MODELS)}, not {self.model}; "
                "choose one of them, or leave the text columns out"
            )
        if self.features is not None:
            clash = sorted(set(self.text_columns) & set(self.features))
            if clash:
                raise ValueError(f"tabular.features: {clash} are tabular.text_columns")
        if self.features is not None:
            if not self.features:
                raise ValueError("tabular.features: empty; list columns or null for all")
            repeated = sorted({c for c in self.features if self.features.count(c) > 1})
            if repeated:
                raise ValueError(f"tabular.features: {repeated} listed twice")
        if self.categorical and self.features is not None:
            unknown = sorted(set(self.categorical) - set(self.features))
            if unknown:
                raise ValueError(f"tabular.categorical: {unknown} are not in tabular.features")
        return self
