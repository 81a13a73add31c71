#!/usr/bin/env python3
"""Regenerate the scikit-learn golden fixtures in tests/fixtures/sklearn/.

deltacache's TF-IDF embedding must equal scikit-learn's ``TfidfVectorizer``.
This script builds a deterministic test corpus, fits several vectorizer
configurations with the installed scikit-learn, and writes:

* ``corpus.jsonl``: ~3000 documents ``{"id", "text", "category"}``: synthetic
  catalogue text (scripts/gen_corpus.py) plus deliberate hard cases (accents,
  ß, Turkish İ, Greek final sigma, Cyrillic, CJK, Arabic, Devanagari with
  combining vowel signs, emoji, ² ½, full-width digits, underscores,
  apostrophes, hyphens, UPPER CASE, digits, punctuation runs, single-character
  tokens, exact duplicate texts, texts made only of stop words or punctuation).
* ``golden.json``: versions, the corpus SHA-256 and, per configuration:
  ``name``, ``params`` (constructor kwargs), ``vocabulary`` (term per index),
  ``idf``, ``doc_vectors`` (``{"doc_idx", "vector": [[term_idx, weight], ...]}``
  for the first 150 documents and 50 others, from ``transform``), and
  ``queries`` (``{"query", "vector", "top_k": [[doc_id, score], ...]}``: the
  10 best ``cosine_similarity`` scores > 0, ties broken by corpus order via a
  stable sort on -score). The max_features configurations also record how
  scikit-learn broke the count ties at the cut-off (``max_features_ties``):
  sklearn's choice among tied terms is not stable and depends on numpy's
  CPU-dependent sort, so a fourth configuration uses the smallest
  max_features >= 300 whose cut-off has no tie (same result everywhere).
* ``model_defaults.json``: scripts/export_sklearn_vectorizer.py's export of
  the ``stop_words="english"`` configuration (fitted on corpus.jsonl), saved
  with joblib and exported through the same code path as the CLI.
* ``unsupported_models/*.json``: exports of vectorizers with one setting
  deltacache does not implement each; the file name names the setting.

Floats are written with full precision (``repr``). Output is deterministic for
a given Python/NumPy/scikit-learn version (recorded in golden.json).

Rerun from the repository root (takes a few seconds):

    python3 scripts/make_sklearn_fixtures.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
import warnings
from pathlib import Path

import joblib
import numpy as np
import scipy
import sklearn
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

import export_sklearn_vectorizer as exporter  # noqa: E402
import gen_corpus  # noqa: E402

SEED = 20240611
N_SYNTHETIC = 2600
TOP_K = 10
N_FIRST_DOC_VECTORS = 150
N_OTHER_DOC_VECTORS = 50
MAX_FEATURES_TIE_AT = 300

CONFIGS = [
    ("defaults", {}),
    ("stop_words_english", {"stop_words": "english"}),
    (
        f"stop_words_english_max_features_{MAX_FEATURES_TIE_AT}",
        {"stop_words": "english", "max_features": MAX_FEATURES_TIE_AT},
    ),
]

# ---------------------------------------------------------------------------
# Hard cases
# ---------------------------------------------------------------------------

HARD_TEXTS = [
    # Latin accents, German, Turkish
    "Café crème brûlée at the café; CAFÉ CRÈME",
    "naïve résumé façade Ångström São Paulo Zürich Köln",
    "Straße STRASSE straße Fußball groß GROSS ẞ capital sharp s",
    "İstanbul ISTANBUL istanbul ıstanbul Iğdır DİYARBAKIR",
    "cafe\u0301 decomposed e\u0301cole versus composed école",
    "Ǆemal ǅemal ǆemal titlecase digraphs ǈ ǋ",
    "ﬁle ﬂow ligatures ﬁnance oﬃce",
    # Greek final sigma
    "ΟΔΟΣ οδός Σίσυφος ΣΟΦΟΣ σοφός λόγος ΑΘΗΝΑ Αθήνα",
    "ΣΣ Σ ΑΣ ΑΣ. ΛΟΓΟΣΣ σς ςσ ΌΣΟΣ",
    # Cyrillic
    "Москва привет мир ЁЛКА ёлка Київ Ґанок база данных",
    "РЕПЛИКАЦИЯ репликация Сервер сервер индекс ИНДЕКС",
    # CJK and Korean
    "東京 タワー 日本語のテキスト 中文分词 한국어 텍스트 데이터베이스",
    "数据库 复制 索引 データベース レプリケーション インデックス",
    # Arabic (with and without harakat), Hebrew
    "مرحبا بالعالم قاعدة البيانات كِتَابٌ كتاب",
    "שלום עולם מסד נתונים",
    # Devanagari, Thai (combining vowel signs split Python \\w words)
    "हिन्दी भाषा नमस्ते दुनिया डेटाबेस सर्वर",
    "ภาษาไทย ฐานข้อมูล สวัสดี",
    # Emoji
    "🚀 rocket launch 👍🏽 thumbs up ❤️ love 🇩🇪 flag 🙂🙂🙂",
    "emoji🚀inside words👍here and ZWJ 👨‍👩‍👧 family",
    # Superscripts, subscripts, fractions, numerals
    "x² m³ E=mc² H₂O CO₂ 10⁶ footnote¹",
    "½ cup ¾ inch 1½ liters ⅓ share 2¼",
    "Roman Ⅻ ⅻ Ⅳ circled ①②③ ⑩ superscript²³",
    "ＡＢＣ１２３ full-width ｄａｔａｂａｓｅ ＳＥＲＶＥＲ ２０２４",
    "٠١٢٣٤ Arabic-Indic digits ०१२३ Devanagari digits",
    # Underscores, apostrophes, hyphens
    "snake_case __init__ _private foo_bar_baz ___ __ _x x_",
    "don't can't it's O'Reilly rock'n'roll users' ‘curly’ it’s isn’t",
    "e-mail state-of-the-art x-ray co-operate pre‐built non‑breaking em—dash en–dash",
    "co\u00adoperate soft hyphen foo\u200bbar zero width nbsp\u00a0space",
    # UPPER CASE, digits
    "POSTGRES REPLICATION FAILOVER HIGH AVAILABILITY CLUSTER",
    "KUBERNETES Kubernetes kubernetes KuBeRnEtEs k8s K8S",
    "v2.0.1 2024-06-11 10.0.0.1 1e10 3.14159 0x1F 007 42 1,000,000",
    "64GB DDR5 RAM 2U rack 10GbE NIC 4K display",
    # Punctuation runs
    "!!!???...;;;:::---***",
    "foo!!!bar???baz...qux;;;quux",
    "((nested)) [[brackets]] {{braces}} <<angles>> \"quotes\" 'single'",
    "path/to/file.txt C:\\Users\\admin https://example.com/a?b=c&d=e user@example.com",
    "#hashtag @mention $price 100% a&b a+b a=b a|b a~b",
    # Single-character tokens
    "a b c x y z 1 2 3 é ß ı ç",
    "I O U A E",
    # Whitespace
    "line1\nline2\tcolumn\r\nwindows   spaces",
    # Kelvin, Angstrom signs, math letters, Cherokee, Georgian
    "\u212a kelvin \u212b angstrom 𝐀𝐁𝐂 𝒳 ℝ ℕ",
    "Ꮳ Ꭰ cherokee ᏣᎳᎩ Ა Ბ Georgian ႠႡ",
]

STOP_ONLY_TEXTS = [
    "the and of",
    "The AND Of to In",
    "which is it",
    "we are here because they were there",
    "a an the",
    "itself yourselves ourselves",
]

PUNCT_ONLY_TEXTS = ["", " ", "...", "!!! ??? ---", "— – …", "🙂", "\t\n"]

UNKNOWN_WORDS = [
    "zzzxqj flurble",
    "qwertyuiop asdfghjkl",
    "xylophonic grommets",
    "blorptastic",
    "snarfwidget frobnicator",
    "UNKNOWNWORD",
    "glorp",
    "quuxify wibblewobble",
    "Ξξζω",  # Greek letters, not a corpus word
    "ꙮꙮ",
    "frabjous callooh callay",
    "vorpal snicker snack",
    "mimsy borogoves",
    "jabberwock",
    "tulgey wood",
]

DIGIT_QUERIES = [
    "v2 2024", "64gb ddr5", "10.0.0.1", "3.14159", "007", "1u rack 2u", "4k display",
    "2025 v3", "0x1F", "1e10", "42", "128GB", "x86 arm64", "100g", "1,000,000",
]

PUNCT_QUERIES = [
    "replication!!!", "(backup) [restore]", "foo-bar", "e-mail", "don't stop",
    "snake_case __init__", "!!!", "...", "???", "foo!!!bar", "state-of-the-art",
    "O'Reilly", "it’s", "user@example.com", "https://example.com/a?b=c",
]

UNICODE_QUERIES = [
    "café", "CAFÉ crème", "cafe\u0301", "école", "naïve résumé", "straße", "STRASSE",
    "Fußball", "groß", "ẞ", "İstanbul", "ISTANBUL", "ıstanbul", "DİYARBAKIR", "ΟΔΟΣ",
    "οδός", "ΣΟΦΟΣ", "σοφός", "σοφος", "λόγος", "ΛΟΓΟΣΣ", "Москва", "ЁЛКА ёлка",
    "репликация СЕРВЕР", "東京", "日本語のテキスト", "数据库", "한국어", "كتاب", "كِتَابٌ",
    "हिन्दी", "नमस्ते दुनिया", "डेटाबेस", "ภาษาไทย", "🚀 rocket", "👍🏽", "emoji🚀inside",
    "x²", "mc²", "H₂O", "½ cup", "1½", "Ⅻ", "ⅻ", "①②③", "ＡＢＣ１２３", "ｄａｔａｂａｓｅ",
    "٠١٢٣٤", "ﬁle", "Ǆemal", "\u212a kelvin", "𝐀𝐁𝐂", "ᏣᎳᎩ", "Ა",
]

STOP_QUERIES = [
    "the and of", "which is it", "THE AND", "a an the", "we are here", "itself",
    "Of To In", "because they were", "over under", "not only but also",
]

EMPTY_QUERIES = ["", " ", "\t\n", "a", "x y z", "I", "é ß"]


def build_corpus() -> list[dict]:
    rng = random.Random(SEED)
    gen = gen_corpus.CorpusGenerator(SEED)
    synthetic = []
    for i in range(N_SYNTHETIC):
        item = gen.item(i + 1)
        # Vary the length: some short, some long documents.
        text = item["text"]
        r = rng.random()
        if r < 0.15:
            text = " ".join(text.split()[: rng.randint(3, 10)])
        elif r < 0.25:
            text = text + " " + gen.text(item["category"], 150)
        synthetic.append({"text": text, "category": item["category"]})

    hard = [{"text": t, "category": "edge-case"} for t in HARD_TEXTS]
    hard += [{"text": t, "category": "stop-words-only"} for t in STOP_ONLY_TEXTS]
    hard += [{"text": t, "category": "punctuation-only"} for t in PUNCT_ONLY_TEXTS]
    # Synthetic text mixed with hard fragments (UPPER-cased, punctuated, unicode).
    fragments = [w for t in HARD_TEXTS for w in t.split()]
    for j in range(150):
        src = synthetic[rng.randrange(len(synthetic))]
        words = src["text"].split()
        for _ in range(rng.randint(1, 4)):
            words.insert(rng.randint(0, len(words)), rng.choice(fragments))
        if j % 5 == 0:
            words = [w.upper() for w in words]
        elif j % 5 == 1:
            words = [w + rng.choice(["!!!", "...", ",", ";", "?!", "--"]) for w in words]
        elif j % 5 == 2:
            words = [w.capitalize() for w in words]
        hard.append({"text": " ".join(words), "category": "mixed-" + src["category"]})
    # Exact duplicates (ties in top_k).
    dups = []
    for j in range(40):
        src = synthetic[rng.randrange(len(synthetic))] if j % 4 else hard[rng.randrange(len(HARD_TEXTS))]
        dups.append(dict(src))

    # First 150 documents: 72 hard cases (all pure hard / empty-ish ones
    # first), 72 synthetic, interleaved, plus 6 exact duplicates of earlier
    # head documents so ties show up in doc_vectors too; then the rest, shuffled.
    n_head = (N_FIRST_DOC_VECTORS - 6) // 2
    head = []
    for a, b in zip(hard[:n_head], synthetic[:n_head]):
        head += [a, b]
    for pos, src in [(20, 1), (41, 0), (62, 5), (90, 33), (111, 2), (140, 77)]:
        head.insert(pos, dict(head[src]))
    assert len(head) == N_FIRST_DOC_VECTORS
    rest = synthetic[n_head:] + hard[n_head:] + dups
    rng.shuffle(rest)
    # Make config (c)'s max_features=300 cut-off fall inside a group of terms
    # with equal total counts, so tie-breaking is actually exercised: documents
    # repeating one word (themselves a hard case) top up the terms ranked
    # 296..305 to the count of the one ranked 296.
    cv = CountVectorizer(stop_words="english")
    counts = np.asarray(cv.fit_transform([d["text"] for d in head + rest]).sum(axis=0)).ravel()
    terms = cv.get_feature_names_out()
    ranked = np.argsort(-counts, kind="stable")
    target = int(counts[ranked[MAX_FEATURES_TIE_AT - 5]])
    for t in ranked[MAX_FEATURES_TIE_AT - 5 : MAX_FEATURES_TIE_AT + 5]:
        deficit = target - int(counts[t])
        if deficit > 0:
            doc = {"text": " ".join([str(terms[t])] * deficit), "category": "repeated-word"}
            rest.insert(rng.randrange(len(rest) + 1), doc)
    docs = head + rest
    return [
        {"id": f"item-{i + 1:06d}", "text": d["text"], "category": d["category"]}
        for i, d in enumerate(docs)
    ]


def build_queries(corpus: list[dict]) -> list[str]:
    rng = random.Random(SEED + 1)
    gen = gen_corpus.CorpusGenerator(gen_corpus.query_rng_seed(SEED))
    normal = [gen.query() for _ in range(140)]
    from_docs = []
    for _ in range(30):
        words = corpus[rng.randrange(len(corpus))]["text"].split()
        if not words:
            continue
        k = rng.randint(2, 6)
        start = rng.randint(0, max(0, len(words) - k))
        from_docs.append(" ".join(words[start : start + k]))
    cased = []
    for j, q in enumerate(normal[:25]):
        if j % 2 == 0:
            cased.append(q.upper())
        else:  # mixed: Title and UPPER alternating
            cased.append(" ".join(w.upper() if i % 2 else w.title() for i, w in enumerate(q.split())))
    queries = (
        normal + from_docs + cased + DIGIT_QUERIES + PUNCT_QUERIES + UNICODE_QUERIES
        + UNKNOWN_WORDS + STOP_QUERIES + EMPTY_QUERIES
    )
    seen: set[str] = set()
    out = []
    for q in queries:
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


# ---------------------------------------------------------------------------
# Golden values
# ---------------------------------------------------------------------------


def row_pairs(row) -> list[list]:
    row = row.tocsr()
    row.sort_indices()
    return [[int(j), float(v)] for j, v in zip(row.indices, row.data)]


def top_k(scores: np.ndarray, ids: list[str]) -> list[list]:
    order = np.argsort(-scores, kind="stable")
    out = []
    for i in order[:TOP_K]:
        if scores[i] <= 0:
            break
        out.append([ids[i], float(scores[i])])
    return out


def other_doc_indices(corpus: list[dict]) -> list[int]:
    rng = random.Random(SEED + 2)
    special = [
        i for i, d in enumerate(corpus)
        if i >= N_FIRST_DOC_VECTORS
        and d["category"] in ("edge-case", "stop-words-only", "punctuation-only")
    ]
    mixed = [i for i, d in enumerate(corpus) if i >= N_FIRST_DOC_VECTORS and d["category"].startswith("mixed-")]
    texts = {}
    dup_idx = []
    for i, d in enumerate(corpus):
        if d["text"] in texts and i >= N_FIRST_DOC_VECTORS:
            dup_idx.append(i)
        texts.setdefault(d["text"], i)
    chosen = set(special[:10]) | set(dup_idx[:10]) | set(rng.sample(mixed, min(15, len(mixed))))
    pool = [i for i in range(N_FIRST_DOC_VECTORS, len(corpus)) if i not in chosen]
    chosen |= set(rng.sample(pool, N_OTHER_DOC_VECTORS - len(chosen)))
    return sorted(chosen)


def max_features_ties(texts: list[str], params: dict, vec: TfidfVectorizer) -> dict:
    """How sklearn broke count ties at the max_features cut-off."""
    limit = params["max_features"]
    cv_params = {k: v for k, v in params.items() if k != "max_features"}
    cv = CountVectorizer(**cv_params)
    counts = cv.fit_transform(texts)
    terms = cv.get_feature_names_out()  # alphabetical (= sklearn's order before limiting)
    tfs = np.asarray(counts.sum(axis=0)).ravel()
    stable = np.argsort(-tfs, kind="stable")[:limit]
    boundary = int(tfs[stable[-1]])
    kept = set(vec.vocabulary_)
    tied = [str(t) for t, c in zip(terms, tfs) if c == boundary]
    return {
        "note": (
            "sklearn keeps the max_features terms with the highest total counts, "
            "choosing among equal counts with numpy's default argsort, which is not stable: "
            "`mask_inds = (-tfs[mask]).argsort()[:limit]` in _limit_features. Which tied "
            "terms survive depends on numpy's sort implementation, which it picks by CPU "
            "features (numpy 2.4.6 here keeps a different tied term with AVX2 than with "
            "NPY_DISABLE_CPU_FEATURES=X86_V3), so only kept_tied_terms is machine-specific. "
            "stable_alphabetical_* is what a stable sort on (-count, term) would keep."
        ),
        "boundary_count": boundary,
        "n_above_boundary": int((tfs > boundary).sum()),
        "tied_terms": tied,
        "kept_tied_terms": [t for t in tied if t in kept],
        "stable_alphabetical_kept_tied_terms": sorted(str(terms[i]) for i in stable if tfs[i] == boundary),
        "matches_stable_alphabetical": sorted(kept) == sorted(str(terms[i]) for i in stable),
    }


def untied_max_features(texts: list[str], params: dict, near: int) -> int:
    """Smallest limit >= `near` whose cut-off falls between two different counts,
    so every max_features implementation must keep the same terms."""
    counts = CountVectorizer(**params).fit_transform(texts)
    tfs = np.sort(np.asarray(counts.sum(axis=0)).ravel())[::-1]
    limit = near
    while limit < len(tfs) and tfs[limit - 1] == tfs[limit]:
        limit += 1
    return limit


def golden_config(name: str, params: dict, corpus: list[dict], queries: list[str]) -> tuple[dict, TfidfVectorizer]:
    texts = [d["text"] for d in corpus]
    ids = [d["id"] for d in corpus]
    vec = TfidfVectorizer(**params)
    fitted = vec.fit_transform(texts)
    X = vec.transform(texts)
    diff = abs(fitted - X).max() if X.nnz else 0.0
    assert diff < 1e-15, f"{name}: fit_transform and transform differ by {diff}"
    vocabulary = [str(t) for t in vec.get_feature_names_out()]
    assert all(vec.vocabulary_[t] == i for i, t in enumerate(vocabulary))

    doc_idx = list(range(N_FIRST_DOC_VECTORS)) + other_doc_indices(corpus)
    doc_vectors = [{"doc_idx": i, "vector": row_pairs(X[i])} for i in doc_idx]

    Q = vec.transform(queries)
    sims = cosine_similarity(Q, X)
    qs = []
    for qi, q in enumerate(queries):
        qs.append({"query": q, "vector": row_pairs(Q[qi]), "top_k": top_k(sims[qi], ids)})

    out = {
        "name": name,
        "params": params,
        "vocabulary": vocabulary,
        "idf": [float(x) for x in vec.idf_],
        "doc_vectors": doc_vectors,
        "queries": qs,
    }
    if "max_features" in params:
        out["max_features_ties"] = max_features_ties(texts, params, vec)
    return out, vec


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def compact(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def render_golden(golden: dict) -> str:
    """Valid JSON, one config field / document vector / query per line (diffable)."""
    lines = ["{"]
    top = [(k, v) for k, v in golden.items() if k != "configs"]
    for k, v in top:
        lines.append(f"{compact(k)}:{compact(v)},")
    lines.append('"configs":[')
    for ci, cfg in enumerate(golden["configs"]):
        lines.append("{")
        fields = list(cfg.items())
        for fi, (k, v) in enumerate(fields):
            end = "," if fi < len(fields) - 1 else ""
            if k in ("doc_vectors", "queries"):
                lines.append(f"{compact(k)}:[")
                for i, x in enumerate(v):
                    lines.append(compact(x) + ("," if i < len(v) - 1 else ""))
                lines.append("]" + end)
            else:
                lines.append(f"{compact(k)}:{compact(v)}{end}")
        lines.append("}" + ("," if ci < len(golden["configs"]) - 1 else ""))
    lines.append("]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == golden
    return text


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({len(text.encode()):,} bytes)")


def export_via_joblib(vec, tmpdir: str, name: str) -> str:
    path = os.path.join(tmpdir, name + ".joblib")
    joblib.dump(vec, path)
    model = exporter.load_and_export(path)
    return json.dumps(model, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"


UNSUPPORTED = [
    # (file name, constructor kwargs); the file name names the refused setting.
    ("ngram_range_1_2", {"ngram_range": (1, 2)}),
    ("analyzer_char", {"analyzer": "char"}),
    ("analyzer_char_wb", {"analyzer": "char_wb"}),
    ("analyzer_callable", {"analyzer": str.split}),
    ("sublinear_tf_true", {"sublinear_tf": True}),
    ("tokenizer_callable", {"tokenizer": str.split}),  # sklearn warns token_pattern is unused
    ("preprocessor_callable", {"preprocessor": str.strip}),
    ("strip_accents_unicode", {"strip_accents": "unicode"}),
    ("norm_l1", {"norm": "l1"}),
    ("norm_none", {"norm": None}),
    ("lowercase_false", {"lowercase": False}),
    ("binary_true", {"binary": True}),
    ("use_idf_false", {"use_idf": False}),
    ("token_pattern_custom", {"token_pattern": r"(?u)\b\w+\b"}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Regenerate tests/fixtures/sklearn/ (corpus, golden values, exported models)."
    )
    ap.add_argument(
        "--out-dir", default=str(REPO / "tests" / "fixtures" / "sklearn"), help="output directory"
    )
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)

    corpus = build_corpus()
    queries = build_queries(corpus)
    corpus_text = "".join(compact(d) + "\n" for d in corpus)
    write(out_dir / "corpus.jsonl", corpus_text)

    golden = {
        "generator": "scripts/make_sklearn_fixtures.py",
        "python_version": platform.python_version(),
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "corpus": "corpus.jsonl",
        "corpus_sha256": hashlib.sha256(corpus_text.encode()).hexdigest(),
        "n_docs": len(corpus),
        "top_k": TOP_K,
        "configs": [],
    }
    vecs = {}
    texts = [d["text"] for d in corpus]
    limit = untied_max_features(texts, {"stop_words": "english"}, MAX_FEATURES_TIE_AT)
    configs = CONFIGS + [
        (f"stop_words_english_max_features_{limit}_untied", {"stop_words": "english", "max_features": limit})
    ]
    for name, params in configs:
        cfg, vec = golden_config(name, params, corpus, queries)
        golden["configs"].append(cfg)
        vecs[name] = vec
    write(out_dir / "golden.json", render_golden(golden))

    with tempfile.TemporaryDirectory(prefix="make_sklearn_fixtures.") as tmp:
        write(out_dir / "model_defaults.json", export_via_joblib(vecs["stop_words_english"], tmp, "model"))
        small = [d["text"] for d in corpus[:40]]
        for fname, params in UNSUPPORTED:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                vec = TfidfVectorizer(**params).fit(small)
            write(out_dir / "unsupported_models" / f"{fname}.json", export_via_joblib(vec, tmp, fname))
    return 0


if __name__ == "__main__":
    sys.exit(main())
