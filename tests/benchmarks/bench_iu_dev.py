"""End-to-end benchmark on the IU X-ray dev cohort (real reports, no images), through the Python API.

1. Cohort: :func:`medmix.datasets.build_cohort` with the ``iu_xray`` adapter and
   ``note_sections: separate`` -> three text modalities ``indication``, ``findings``,
   ``impression`` (empty section = missing), the 15 default MeSH findings, the adapter's
   0.65 / 0.15 / 0.20 patient split.
2. Stage 1: every expert of the text committee (and the teacher) of the config's expert profile
   (default: ``config.yaml``, profile ``demo``) is run per section with
   :func:`extractors.runner.run_extraction` into ``<cache>/features/<modality>/<expert>-<key>.parquet``,
   where ``key`` hashes the expert's source files and settings, so an edited expert is
   re-extracted and an unchanged one never is. ``rag_minilm`` gets the demo knowledge base and
   its index under ``<cache>/rag``. Stage 1 never sees labels or splits.
3. Stage 2: the features are standardised on the training split
   (:class:`medmix.data.Standardizer`, as the fit job does) and every method is fitted with the
   config's ``training`` section (plus ``method_params.<method>``), seeds 0-4 by default.
4. Raw-text reference ``tfidf_lr`` (:class:`TfidfLR`): TF-IDF 1-2-grams of each section, fitted
   on the training split's text only, + the linear probe's logistic regression (same ``C``
   grid, same validation criterion) -- what the cached text committee is measured against.
5. Metrics: :func:`medmix.metrics.classification.compute_metrics` on the test split with per-label
   thresholds tuned on the validation split only (:func:`tune_thresholds`); the table gives
   test macro AUROC / AUPRC per seed and mean ± std, and the wall time of each method. The
   validation macro AUROC / AUPRC per seed are printed too (for choices made on validation).

Per-(method, seed, epoch) curves go to ``<cache>/curves/<tag>-<method>.csv``.

Usage::

    python tests/benchmarks/bench_iu_dev.py --cache /tmp/iu_cache \\
        [--data ../shared/data/iu_xray_dev] [--config config.yaml] [--seeds 0 1 2 3 4] \\
        [--methods medmix meanavg linear_probe tfidf_lr] [--committee text_keywords minilm_l6 ...] \\
        [--set medmix.router_warmup_epochs=0 ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

SECTIONS = ("indication", "findings", "impression")


def load_config(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def build_iu_cohort(data_dir: Path):
    from medmix.datasets import build_cohort

    cfg = {
        "adapter": "iu_xray", "task": "multilabel",
        "reports_csv": str(data_dir / "indiana_reports.csv"),
        "projections_csv": str(data_dir / "indiana_projections.csv"),
        "note_sections": "separate",
        "modalities": {s: {"kind": "text"} for s in SECTIONS},
    }
    return build_cohort("iu_xray_dev", cfg, ".")


def text_committee(config: dict[str, Any]) -> tuple[list[dict[str, str]], str | None]:
    profile = config["experts"]["profiles"][config["experts"].get("profile", "demo")]
    text = profile["text"]
    return [dict(m) for m in text["committee"]], text.get("teacher")


def _expert_key(name: str, settings: dict[str, Any]) -> str:
    from extractors.registry import expert_module, extra_source_files, get_spec
    from medmix.plan.code_closure import closure_files

    h = hashlib.sha256()
    for f in [*closure_files(expert_module(name)), *extra_source_files(name)]:
        h.update(Path(f).read_bytes())
    spec = get_spec(name)
    h.update(json.dumps({"pre": spec.preprocessing, "dim": spec.dim, "settings": settings}, sort_keys=True,
                        default=str).encode())
    return h.hexdigest()[:10]


def _rag_settings(cache: Path, name: str) -> dict[str, Any]:
    from extractors.knowledge.index import build_index
    from extractors.knowledge.kb import ingest
    from extractors.registry import create_extractor

    rag = cache / "rag"
    kb, index = rag / "kb.parquet", rag / f"index-{name}"
    if not kb.is_file():
        rag.mkdir(parents=True, exist_ok=True)
        ingest("demo", kb)
    settings = {"options": {"index_dir": str(index)}}
    if not (index / "manifest.json").is_file():
        encoder, lm = create_extractor(name, settings).index_specs()
        build_index(kb, index, encoder, lm)
    return settings


def extract(cohort, cache: Path, experts: list[str], expert_settings: dict[str, dict[str, Any]] | None = None
            ) -> dict[tuple[str, str], Path]:
    """Feature file per (section, expert), extracted once and reused from ``cache``."""
    from extractors.registry import create_extractor, get_spec
    from extractors.runner import run_extraction

    out: dict[tuple[str, str], Path] = {}
    for name in dict.fromkeys(experts):
        settings = dict((expert_settings or {}).get(name, {}))
        if get_spec(name).role == "rag":
            settings = {**settings, **_rag_settings(cache, name)}
        key = _expert_key(name, {k: v for k, v in settings.items() if k != "options"})
        extractor = None
        for m in SECTIONS:
            path = cache / "features" / m / f"{name}-{key}.parquet"
            if not path.is_file():
                extractor = extractor or create_extractor(name, settings)
                path.parent.mkdir(parents=True, exist_ok=True)
                t = time.perf_counter()
                run_extraction(extractor, cohort.sample_ids, cohort.inputs(m), str(path))
                print(f"  extracted {name} on {m} in {time.perf_counter() - t:.1f}s", flush=True)
            out[(m, name)] = path
    return out


def load_data(cohort, files: dict[tuple[str, str], Path], committee: list[dict[str, str]], teacher: str | None):
    from medmix.data import Standardizer, from_bundle
    from medmix.features import assemble

    members = {m: [{"path": files[(m, e["name"])], "role": e.get("role", "general")} for e in committee]
               for m in SECTIONS}
    teachers = {m: {"path": files[(m, teacher)]} for m in SECTIONS} if teacher else None
    data = from_bundle(cohort, assemble(cohort.sample_ids, members, teachers))
    return Standardizer.fit(data.split_part("train")).apply(data)


def method_params(config: dict[str, Any], method: str, overrides: dict[str, Any], threads: int) -> dict[str, Any]:
    params = {**(config.get("training") or {}), **((config.get("method_params") or {}).get(method) or {})}
    params.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.split(".", 1)[0] in (method, "all")})
    params["threads"] = threads
    return params


def evaluate(method, val, test) -> list[dict[str, float]]:
    from medmix.metrics.classification import compute_metrics, tune_thresholds

    pv, pt = method.predict(val).prob, method.predict(test).prob
    yv, yt = val.y.numpy(), test.y.numpy()
    rows = []
    for s, seed in enumerate(method.seeds):
        thr = tune_thresholds(pv[s], yv)
        on_val = compute_metrics(pv[s], yv, val.task, thr)
        rows.append({"seed": seed, **compute_metrics(pt[s], yt, test.task, thr),
                     "val_auroc": on_val["auroc"], "val_auprc": on_val["auprc"]})
    return rows


def tfidf_features(cohort, data):
    """Sparse ``[N, V]`` TF-IDF features of the raw section text plus one presence flag per section.

    Per section, a scikit-learn ``TfidfVectorizer(ngram_range=(1, 2))`` (otherwise its defaults)
    is fitted on that section's texts **in the training split only** and transforms every
    sample; a missing section gives a zero row and a 0 flag. Labels are never used; the split
    only keeps validation and test text out of the vocabulary and idf.
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = data.split == "train"
    order = {sid: i for i, sid in enumerate(cohort.sample_ids)}
    blocks, flags = [], []
    for m in SECTIONS:
        raw = cohort.inputs(m)
        texts = [raw[order[sid]] for sid in data.sample_ids]
        present = np.array([isinstance(t, str) and bool(t.strip()) for t in texts])
        vec = TfidfVectorizer(ngram_range=(1, 2))
        vec.fit([t for t, p, tr in zip(texts, present, train, strict=True) if p and tr])
        blocks.append(vec.transform([t if p else "" for t, p in zip(texts, present, strict=True)]))
        flags.append(present.astype(np.float64)[:, None])
    return sp.hstack(blocks + [sp.csr_matrix(np.hstack(flags))], format="csr")


class TfidfLR:
    """TF-IDF (1-2-grams) + logistic regression on the raw section text: the text reference.

    The estimator and the choice of ``C`` are :mod:`medmix.methods.linear_probe`'s (per-label L2
    ``lbfgs`` logistic regression, unknown labels skipped; one ``C`` from the same declared grid
    with the lowest mean validation log-loss), on sparse TF-IDF features instead of the cached
    embeddings. Deterministic: every seed gets the same model.
    """

    def __init__(self, cohort, params: dict[str, Any]):
        from medmix.methods.linear_probe import C_GRID

        self.cohort = cohort
        self.c_grid = tuple(float(c) for c in params.get("lp_c_grid", C_GRID))
        self.seeds: list[int] = []

    def fit_predict(self, data, seeds: list[int]):
        import warnings

        from sklearn.linear_model import LogisticRegression

        from medmix.methods.linear_probe import _log_loss, _sigmoid

        x = tfidf_features(self.cohort, data)
        y = data.y.numpy().astype(np.float64)
        parts = {s: np.flatnonzero(data.split == s) for s in ("train", "val", "test")}
        best = None
        for c in self.c_grid:
            logits = np.zeros((data.n, y.shape[1]))
            losses = []
            for j in range(y.shape[1]):
                tr = parts["train"][~np.isnan(y[parts["train"], j])]
                if np.unique(y[tr, j]).size < 2:
                    prev = float(np.clip(y[tr, j].mean() if tr.size else 0.5, 1e-4, 1 - 1e-4))
                    logits[:, j] = np.log(prev / (1 - prev))
                else:
                    model = LogisticRegression(C=c, solver="lbfgs", max_iter=5000)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(x[tr], y[tr, j])
                    logits[:, j] = model.decision_function(x)
                va = parts["val"][~np.isnan(y[parts["val"], j])]
                if va.size:
                    losses.append(_log_loss(y[va, j], _sigmoid(logits[va, j])))
            loss = float(np.mean(losses))
            if best is None or loss < best[0] - 1e-12:
                best = (loss, c, _sigmoid(logits))
        assert best is not None
        self.c, self.seeds = best[1], [int(s) for s in seeds]
        prob = best[2].astype(np.float32)
        return {s: np.stack([prob[idx]] * len(self.seeds)) for s, idx in parts.items()}


def run_tfidf(cohort, params: dict[str, Any], data, seeds: list[int]):
    from medmix.metrics.classification import compute_metrics, tune_thresholds

    t0 = time.perf_counter()
    ref = TfidfLR(cohort, params)
    probs = ref.fit_predict(data, seeds)
    seconds = time.perf_counter() - t0
    yv, yt = data.split_part("val").y.numpy(), data.split_part("test").y.numpy()
    rows = []
    for k, seed in enumerate(ref.seeds):
        thr = tune_thresholds(probs["val"][k], yv)
        on_val = compute_metrics(probs["val"][k], yv, data.task, thr)
        rows.append({"seed": seed, **compute_metrics(probs["test"][k], yt, data.task, thr),
                     "val_auroc": on_val["auroc"], "val_auprc": on_val["auprc"]})
    return ref, rows, seconds


#: Pseudo-method of the benchmark: :class:`TfidfLR` on the raw section text.
TFIDF = "tfidf_lr"


def run_method(name: str, params: dict[str, Any], data, seeds: list[int]):
    from medmix.methods import create_method
    from medmix.protocols import Protocol

    train, val, test = (data.split_part(s) for s in ("train", "val", "test"))
    t0, c0 = time.perf_counter(), time.process_time()
    method = create_method(name, params)
    method.fit(train, val, seeds, Protocol("none"))
    seconds = time.perf_counter() - t0
    print(f"{name}: fit {seconds:.1f} s wall, {time.process_time() - c0:.1f} s CPU ({len(seeds)} seeds)", flush=True)
    return method, evaluate(method, val, test), seconds


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def table(results: dict[str, tuple[list[dict[str, float]], float]], seeds: list[int]) -> str:
    lines = ["| method | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | fit s |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for name, (rows, seconds) in results.items():
        for metric in ("auroc", "auprc"):
            vals = np.array([r[metric] for r in rows])
            lines.append(f"| {name} | {metric} | " + " | ".join(f"{v:.4f}" for v in vals)
                         + f" | {vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0.0:.4f} | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="folder for the embedding cache and curves")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "iu_xray_dev")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=["medmix", "meanavg", "linear_probe", TFIDF],
                        help=f"fusion methods; {TFIDF!r} is linear_probe on TF-IDF 1-2-grams of the raw text")
    parser.add_argument("--committee", nargs="+", help="text experts (default: the config profile's text committee)")
    parser.add_argument("--teacher", help="text teacher (default: the profile's; 'none' for none)")
    parser.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE",
                        help="parameter overrides, e.g. medmix.lr=3e-4 (METHOD 'all' for every method)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="run", help="prefix of the curve files")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    config = load_config(args.config)
    committee, teacher = text_committee(config)
    if args.committee:
        committee = [{"name": n, "role": "general"} for n in args.committee]
    if args.teacher:
        teacher = None if args.teacher == "none" else args.teacher
    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: _parse_value(v) for k, v in overrides.items()}

    cohort = build_iu_cohort(args.data)
    expert_settings = (config.get("experts") or {}).get("settings") or {}
    files = extract(cohort, args.cache, [e["name"] for e in committee] + ([teacher] if teacher else []),
                    expert_settings)
    t_extract = time.perf_counter() - t_start
    data = load_data(cohort, files, committee, teacher)
    n = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    print(f"cohort: {n}; committee {[e['name'] for e in committee]}, teacher {teacher}; extraction/cache "
          f"{t_extract:.1f}s", flush=True)

    results: dict[str, tuple[list[dict[str, float]], float]] = {}
    (args.cache / "curves").mkdir(parents=True, exist_ok=True)
    for name in args.methods:
        params = method_params(config, "linear_probe" if name == TFIDF else name, overrides, args.threads)
        if name == TFIDF:
            method, rows, seconds = run_tfidf(cohort, params, data, args.seeds)
            print(f"{name}: C = {method.c}", flush=True)
        else:
            method, rows, seconds = run_method(name, params, data, args.seeds)
            method.curves().to_csv(args.cache / "curves" / f"{args.tag}-{name}.csv", index=False)
        results[name] = (rows, seconds)
        summary = ", ".join(f"s{r['seed']}: {r['auroc']:.4f}/{r['auprc']:.4f}" for r in rows)
        on_val = ", ".join(f"s{r['seed']}: {r['val_auroc']:.4f}/{r['val_auprc']:.4f}" for r in rows)
        print(f"{name} ({seconds:.1f}s) test AUROC/AUPRC {summary}", flush=True)
        print(f"{name} validation AUROC/AUPRC {on_val}; mean {np.mean([r['val_auroc'] for r in rows]):.4f}/"
              f"{np.mean([r['val_auprc'] for r in rows]):.4f}", flush=True)
    print()
    print(table(results, args.seeds))
    wall = time.perf_counter() - t_start
    print(f"\nwall time {wall:.1f}s (extraction or cache read {t_extract:.1f}s)")
    return {"results": results, "wall_s": wall}


if __name__ == "__main__":
    main()
