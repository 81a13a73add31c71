#!/usr/bin/env python3
"""Export a fitted scikit-learn TfidfVectorizer to deltacache's JSON model format.

Loads MODEL.joblib with joblib; the object must be a fitted
``sklearn.feature_extraction.text.TfidfVectorizer`` or a ``Pipeline`` (possibly
nested) containing one, in which case the first TfidfVectorizer step is used.
Writes:

    {"format": "deltacache-sklearn-tfidf", "format_version": 1,
     "sklearn_version": "...", "vocabulary": {"term": index, ...},
     "idf": [...], "settings": {...}}

Settings are exported faithfully, whatever they are; deltacache decides what it
refuses (naming the setting). Callables (analyzer, tokenizer, preprocessor,
strip_accents) are exported as the string "callable". With use_idf=False
(no idf_ in sklearn) "idf" is all 1.0, which is what sklearn multiplies by.
Floats are written with full (round-trip) precision; the vocabulary is written
in index order and the settings in a fixed order, so output is deterministic.

The script exits non-zero with a message naming the input file if it cannot be
loaded or holds no fitted TfidfVectorizer. Only load model files you trust:
unpickling can run arbitrary code.

Rerun, e.g.:

    python3 scripts/export_sklearn_vectorizer.py --in model.joblib --out model.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from numbers import Integral, Real

FORMAT = "deltacache-sklearn-tfidf"
FORMAT_VERSION = 1


class ExportError(Exception):
    pass


def find_vectorizer(obj, path: str):
    """Return the TfidfVectorizer in `obj` (itself or first Pipeline step)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline

    if isinstance(obj, TfidfVectorizer):
        return obj
    if isinstance(obj, Pipeline):
        for _name, step in obj.steps:
            if isinstance(step, TfidfVectorizer):
                return step
            if isinstance(step, Pipeline):
                try:
                    return find_vectorizer(step, path)
                except ExportError:
                    pass
        raise ExportError(f"{path}: Pipeline has no TfidfVectorizer step")
    raise ExportError(
        f"{path}: expected a fitted TfidfVectorizer (or a Pipeline containing one), "
        f"got {type(obj).__module__}.{type(obj).__qualname__}"
    )


def _callable_or(value, allowed=(str, type(None))):
    if value is None or isinstance(value, allowed):
        return value
    if callable(value):
        return "callable"
    raise ExportError(f"unexpected value {value!r}")


def _number(value, name: str):
    """max_df/min_df: keep int vs float (1 document vs 100% of documents)."""
    if isinstance(value, bool):
        raise ExportError(f"{name} is a bool ({value!r})")
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    raise ExportError(f"{name} has unexpected value {value!r}")


def _stop_words(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        words = list(value)
        if not all(isinstance(w, str) for w in words):
            raise ExportError("stop_words list contains non-strings")
        # sklearn only tests membership, so order is irrelevant: sort for stable output.
        return sorted(set(words))
    raise ExportError(f"stop_words has unexpected value {value!r}")


def export(vec, path: str) -> dict:
    import numpy as np
    import sklearn

    try:
        vocab = vec.vocabulary_
        # With use_idf=False sklearn has no idf_; every weight is then tf * 1.0.
        idf = vec.idf_ if vec.use_idf else np.ones(len(vocab))
    except Exception:  # AttributeError / NotFittedError
        raise ExportError(f"{path}: TfidfVectorizer is not fitted") from None

    vocabulary = {str(t): int(i) for t, i in sorted(vocab.items(), key=lambda kv: int(kv[1]))}
    n = len(vocabulary)
    if sorted(vocabulary.values()) != list(range(n)):
        raise ExportError(f"{path}: vocabulary_ indices are not 0..{n - 1}")
    idf_list = [float(x) for x in np.asarray(idf, dtype=np.float64)]
    if len(idf_list) != n:
        raise ExportError(f"{path}: idf_ has {len(idf_list)} entries, vocabulary {n}")
    if not all(math.isfinite(x) for x in idf_list):
        raise ExportError(f"{path}: idf_ contains non-finite values")

    analyzer = vec.analyzer if isinstance(vec.analyzer, str) else "callable"
    max_features = vec.max_features
    settings = {
        "lowercase": bool(vec.lowercase),
        "token_pattern": vec.token_pattern,
        "stop_words": _stop_words(vec.stop_words),
        "norm": vec.norm,
        "use_idf": bool(vec.use_idf),
        "smooth_idf": bool(vec.smooth_idf),
        "sublinear_tf": bool(vec.sublinear_tf),
        "ngram_range": [int(vec.ngram_range[0]), int(vec.ngram_range[1])],
        "analyzer": analyzer,
        "binary": bool(vec.binary),
        "strip_accents": _callable_or(vec.strip_accents),
        "preprocessor": _callable_or(vec.preprocessor, ()),
        "tokenizer": _callable_or(vec.tokenizer, ()),
        "max_df": _number(vec.max_df, "max_df"),
        "min_df": _number(vec.min_df, "min_df"),
        "max_features": None if max_features is None else int(max_features),
        "dtype": np.dtype(vec.dtype).name,
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sklearn_version": sklearn.__version__,
        "vocabulary": vocabulary,
        "idf": idf_list,
        "settings": settings,
    }


def write_json(model: dict, out: str) -> None:
    # allow_nan=False: NaN/Infinity are not JSON; ensure_ascii=False keeps terms readable.
    text = json.dumps(model, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
    if out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(out, "w", encoding="utf-8", newline="\n") as f:
            f.write(text + "\n")


def load_and_export(path: str) -> dict:
    import joblib

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            obj = joblib.load(path)
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except Exception as e:  # unpickling errors come in many types
        raise ExportError(f"{path}: cannot load with joblib: {type(e).__name__}: {e}") from None
    for w in caught:
        print(f"warning: {path}: {w.message}", file=sys.stderr)
    return export(find_vectorizer(obj, path), path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Export a fitted scikit-learn TfidfVectorizer (joblib) to deltacache JSON."
    )
    ap.add_argument("--in", dest="inp", required=True, metavar="MODEL.joblib", help="input joblib file")
    ap.add_argument("--out", required=True, metavar="MODEL.json", help="output JSON file ('-' for stdout)")
    args = ap.parse_args(argv)
    try:
        model = load_and_export(args.inp)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json(model, args.out)
    if args.out != "-":
        s = model["settings"]
        print(
            f"wrote {args.out}: {len(model['vocabulary'])} terms, analyzer={s['analyzer']}, "
            f"ngram_range={s['ngram_range']}, stop_words={'list' if isinstance(s['stop_words'], list) else s['stop_words']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
