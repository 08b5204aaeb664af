"""Free-text columns of a table (``tabular.text_columns``) as word and character TF-IDF.

A fold fits, on its training rows only, one scikit-learn ``TfidfVectorizer`` per text column and
analyser (words, ``tabular.tfidf.word_ngrams``; characters within word boundaries,
``char_ngrams``): its vocabulary and inverse document frequencies, saved as plain JSON and
rebuilt from it to transform other rows exactly as the fitted vectorizer would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from medalist.config import Config
from medalist.errors import DataError
from medalist.modalities.tabular.features import feature_columns

ANALYZERS = {"word": "words", "char_wb": "characters"}


def without_text(cfg: Config) -> Config:
    """The config with the text columns left out of the ordinary features."""
    text = cfg.tabular.text_columns
    if not text:
        return cfg
    exclude = [*cfg.tabular.exclude, *[c for c in text if c not in cfg.tabular.exclude]]
    return cfg.model_copy(update={"tabular": cfg.tabular.model_copy(update={"exclude": exclude})})


def text_values(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    """A text column as strings (missing: empty)."""
    if column not in frame.columns:
        raise DataError(f"{source}: text column '{column}' (tabular.text_columns) not found")
    return frame[column].fillna("").astype(str)


class TextVectors:
    """The TF-IDF blocks of a fold's text columns (one per column and analyser)."""

    def __init__(self, cfg: Config, vectorizers: list[TfidfVectorizer]):
        self.cfg, self.vectorizers = cfg, vectorizers

    def blocks(self) -> list[tuple[str, str]]:
        """(column, analyser) of each block, in order."""
        analyzers = ["word"] + (["char_wb"] if self.cfg.tabular.tfidf.char_ngrams else [])
        return [(c, a) for c in self.cfg.tabular.text_columns for a in analyzers]

    def block_names(self) -> list[str]:
        """``<column> (words)`` and ``<column> (characters)``: what a block is, for people."""
        return [f"{column} ({ANALYZERS[analyzer]})" for column, analyzer in self.blocks()]

    @staticmethod
    def _vectorizer(cfg: Config, analyzer: str, **fitted) -> TfidfVectorizer:
        tfidf = cfg.tabular.tfidf
        ngrams = tfidf.word_ngrams if analyzer == "word" else tfidf.char_ngrams
        return TfidfVectorizer(
            analyzer=analyzer,
            ngram_range=tuple(ngrams),
            min_df=tfidf.min_df,
            max_features=tfidf.max_features,
            sublinear_tf=tfidf.sublinear_tf,
            lowercase=True,
            dtype=np.float64,
            **fitted,
        )

    @classmethod
    def fit(cls, cfg: Config, frame: pd.DataFrame, source: str) -> TextVectors:
        vectors = cls(cfg, [])
        for column, analyzer in vectors.blocks():
            vectorizer = cls._vectorizer(cfg, analyzer)
            try:
                vectorizer.fit(text_values(frame, column, source))
            except ValueError as error:  # no term passes min_df
                raise DataError(f"{source}: column '{column}': {error}") from None
            vectors.vectorizers.append(vectorizer)
        return vectors

    def widths(self) -> list[int]:
        """Terms per block."""
        return [len(v.vocabulary_) for v in self.vectorizers]

    def transform(self, frame: pd.DataFrame, source: str) -> list[sparse.csr_matrix]:
        return [
            vectorizer.transform(text_values(frame, column, source))
            for (column, _), vectorizer in zip(self.blocks(), self.vectorizers, strict=True)
        ]

    def to_list(self) -> list[dict]:
        return [
            {
                "vocabulary": {term: int(i) for term, i in v.vocabulary_.items()},
                "idf": v.idf_.tolist(),
            }
            for v in self.vectorizers
        ]

    @classmethod
    def from_list(cls, cfg: Config, saved: list[dict]) -> TextVectors:
        vectors = cls(cfg, [])
        for (_, analyzer), block in zip(vectors.blocks(), saved, strict=True):
            vectorizer = cls._vectorizer(cfg, analyzer, vocabulary=block["vocabulary"])
            vectorizer.idf_ = np.asarray(block["idf"], dtype=np.float64)
            vectors.vectorizers.append(vectorizer)
        return vectors


def dense_block(matrix: np.ndarray) -> sparse.csr_matrix:
    """A dense block as a sparse one that stores every entry, zeros and NaN included: XGBoost
    reads an entry a sparse matrix leaves out as missing, not as zero."""
    rows, columns = np.indices(matrix.shape)
    entries = (matrix.ravel(), (rows.ravel(), columns.ravel()))
    return sparse.csr_matrix(entries, shape=matrix.shape, dtype=np.float64)


def has_features(cfg: Config, frame: pd.DataFrame) -> bool:
    """Whether a table has features besides the id, the targets and the text columns (a
    linear model on text alone has none)."""
    if cfg.tabular.features is not None:
        return True
    try:
        feature_columns(cfg, list(frame.columns), "")
    except DataError:
        return False
    return True
