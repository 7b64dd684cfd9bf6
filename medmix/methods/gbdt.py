"""``gbdt``: gradient-boosted trees on the concatenated cached embeddings (a reference method).

What a HAIM user compares against first (Soenksen et al., npj Digit. Med. 2022: XGBoost on the
concatenated per-modality embeddings). We use **LightGBM** rather than XGBoost: it handles
missing values natively (each split learns the side absent values go to, so an absent expert is
simply NaN and there is no imputation code of ours), trains fast on a couple of CPU cores with
histogram binning, has a deterministic mode (``deterministic`` + a forced histogram layout + a
fixed ``seed`` and ``num_threads``) and ships a small self-contained wheel.

Features: for every modality and expert, in the committee's order, the expert's embedding as the
method receives it (standardised on the training split by the fit job; a monotone transform,
which trees ignore apart from the ±10 sd clip), with **NaN wherever the expert is absent** (the
mask decides, so whatever value sits in a masked slot is never read). No presence flags: the
learned missing-value direction of every split is the presence information.

Models: one binary model per label for ``multilabel`` / ``binary`` / ``multitask`` tasks (a
label's unknown (NaN) rows are skipped for that label only) and one multiclass model for
``multiclass`` (rows with an unknown class skipped). A label with a single class in training gets
a constant model at its training prevalence (multiclass: fewer than two classes seen → the
training class frequencies).

Selection, on the validation split only: every point of the declared grid
``gbdt_num_leaves`` × ``gbdt_learning_rate`` (default (7, 31) × (0.03, 0.1)) is trained with
early stopping on the validation log-loss (``gbdt_early_stopping`` rounds without improvement,
at most ``gbdt_max_rounds``); per (seed, label) the grid point with the lowest validation
log-loss at its best iteration is kept, truncated to that iteration. The test split never reaches
fit.

Binning (speed, not the model's definition): the training features are binned **once** (at most
``gbdt_max_bin`` bins per feature, default 255, LightGBM's own default) and the validation
features with the same bin mappers; every label, grid point and seed then trains on a row subset
of those binned Datasets (``Dataset.subset``, which shares the bin mappers; the label is set
after), instead of re-binning the wide matrix per label. The bins are a function of the training
features alone while the training split has at most :data:`BIN_SAMPLE` rows (LightGBM then bins
from every row, not a seeded sample), so they are shared across seeds; a train-time protocol
(which masks the rows per seed) or a larger split bins once per seed. The histogram layout is forced (as
determinism requires): column-wise when there are at least as many features as training rows
(the wide cached concatenation), row-wise otherwise.

Seeds: row bagging (``gbdt_bagging_fraction``) and feature sub-sampling
(``gbdt_feature_fraction``) draw from LightGBM's ``seed``, one model set per seed (so the std over
seeds is the trees' own variance); ``deterministic=True`` makes a seed reproducible, and
``num_threads`` is the job's thread count (``torch.get_num_threads()``, which the fit / evaluate
jobs set from the rule's ``threads``).

Train-time protocols: trees have no batches, so a protocol (e.g. ``random_drop``) masks the
training rows once per seed (its generator seeded by the seed) before training; ``none`` trains
on the data as is.

Persistence: each (seed, label) booster is saved as its LightGBM model string (truncated at the
chosen iteration) in a ``uint8`` tensor of the seed's safetensors file; prediction always runs
boosters rebuilt from those strings, so a reloaded method predicts exactly what the fitted one did.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.base import FusionMethod, Prediction
from medmix.protocols import Protocol

log = logging.getLogger("medmix.gbdt")

#: The declared defaults of the method's own settings (``method_params.gbdt.<key>``).
DEFAULTS: dict[str, Any] = {
    "gbdt_num_leaves": [7, 31],
    "gbdt_learning_rate": [0.03, 0.1],
    "gbdt_max_rounds": 1000,
    "gbdt_early_stopping": 50,
    "gbdt_min_data_in_leaf": 10,
    "gbdt_feature_fraction": 0.5,
    "gbdt_bagging_fraction": 0.8,
    "gbdt_lambda_l2": 1.0,
    "gbdt_max_bin": 255,
}
EPS = 1e-7
#: LightGBM's ``bin_construct_sample_cnt``: up to this many rows, bins are computed from every row.
BIN_SAMPLE = 200_000


def gbdt_features(data: TensorData, dims: dict[str, list[int]] | None = None) -> np.ndarray:
    """``[N, Σ d_k]`` float64: every expert's embedding in committee order, NaN where the mask says absent."""
    dims = dims or data.dims()
    blocks = []
    for m, ds in dims.items():
        if m not in data.x:
            raise KeyError(f"gbdt: input lacks modality {m!r}; model modalities: {list(dims)}")
        got = [int(t.shape[1]) for t in data.x[m]]
        if got != list(ds):
            raise ValueError(f"gbdt: modality {m!r} has expert dims {got}, model expects {list(ds)}")
        for k, t in enumerate(data.x[m]):
            present = data.mask[m][:, k].bool().numpy()
            block = t.double().numpy().copy()
            block[~present] = np.nan
            blocks.append(block)
    if not blocks:
        return np.zeros((data.n, 0))
    return np.ascontiguousarray(np.concatenate(blocks, axis=1))


# -- cost (Table E6): LightGBM trees counted from their model strings ----------------------------
def _leaf_depths(left: Sequence[int], right: Sequence[int]) -> dict[int, int]:
    """Depth (comparisons from the root) of each leaf of a LightGBM tree; leaves are ``~child``."""
    depths: dict[int, int] = {}
    stack = [(0, 0)] if left else []
    while stack:
        node, depth = stack.pop()
        for child in (left[node], right[node]):
            if child < 0:
                depths[~child] = depth + 1
            else:
                stack.append((child, depth + 1))
    return depths if left else {0: 0}


def lgb_trees(model_str: str) -> list[dict[int, int]]:
    """Per tree of a LightGBM model string: leaf index -> depth."""
    trees = []
    for block in re.split(r"^Tree=\d+\n", model_str, flags=re.M)[1:]:
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        left, right = ([int(v) for v in fields.get(k, "").split()] for k in ("left_child", "right_child"))
        trees.append(_leaf_depths(left, right))
    return trees


def gbdt_cost(models: Sequence[Any], x: np.ndarray) -> dict[str, Any]:
    """One seed's LightGBM models (model strings; constant models are probability vectors) on
    features ``x``: thresholds + leaf values, and mean comparisons + leaf additions per sample."""
    import lightgbm as lgb

    params, ops = 0, 0.0
    for m in models:
        if not isinstance(m, str):
            params += len(m)
            continue
        trees = lgb_trees(m)
        params += sum(2 * len(t) - 1 for t in trees)
        leaves = np.asarray(lgb.Booster(model_str=m).predict(x, pred_leaf=True)).reshape(len(x), -1)
        depth = np.array([[trees[k][int(leaf)] for k, leaf in enumerate(row)] for row in leaves])
        ops += float(depth.sum(1).mean()) + len(trees) if len(x) else 0.0
    return {"params": int(params), "flops_per_sample": ops, "flops_kind": "comparisons"}


def _check(params: dict[str, Any]) -> dict[str, Any]:
    """The method's settings over :data:`DEFAULTS`, each checked; errors name ``method_params.gbdt.<key>``."""
    out = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}

    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"config key `method_params.gbdt.{key}`: {what}, got {out[key]!r}")

    for key, low in (("gbdt_num_leaves", 2), ("gbdt_learning_rate", 0.0)):
        values = out[key] if isinstance(out[key], list | tuple) else [out[key]]
        if not values or any(isinstance(v, bool) or not isinstance(v, int | float) or v < low or (low == 0 and v == 0)
                             for v in values):
            raise bad(key, f"a non-empty list of numbers {'>= 2' if low else '> 0'}")
        if key == "gbdt_num_leaves" and any(int(v) != v for v in values):
            raise bad(key, "a list of integers")
        out[key] = [int(v) for v in values] if key == "gbdt_num_leaves" else [float(v) for v in values]
    for key in ("gbdt_max_rounds", "gbdt_early_stopping", "gbdt_min_data_in_leaf"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise bad(key, "an integer >= 1")
    if isinstance(out["gbdt_max_bin"], bool) or not isinstance(out["gbdt_max_bin"], int) or out["gbdt_max_bin"] < 2:
        raise bad("gbdt_max_bin", "an integer >= 2")
    for key in ("gbdt_feature_fraction", "gbdt_bagging_fraction"):
        if isinstance(out[key], bool) or not isinstance(out[key], int | float) or not 0 < out[key] <= 1:
            raise bad(key, "a number in (0, 1]")
    if (isinstance(out["gbdt_lambda_l2"], bool) or not isinstance(out["gbdt_lambda_l2"], int | float)
            or out["gbdt_lambda_l2"] < 0):
        raise bad("gbdt_lambda_l2", "a number >= 0")
    return out


def _binary_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _multi_loss(cls: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(cls.size), cls], EPS, 1.0))))


def _encode(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy())


def _decode(tensor: torch.Tensor) -> str:
    return bytes(tensor.numpy().astype(np.uint8)).decode("utf-8")


@register_method("gbdt")
class GBDT(FusionMethod):
    """LightGBM per label (one multiclass model for multiclass) on the NaN-for-absent concatenation."""

    extra_params = tuple(DEFAULTS)
    numpy_predict = True

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Config-time check of the method's own settings (raises ``ValueError`` naming the key)."""
        _check(params)

    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        self.cfg = _check(self.params)
        self.settings: dict[str, Any] = {}
        #: Per seed, per output model: a LightGBM model string or a constant probability vector.
        self.models: list[list[str | list[float]]] = []
        self._boosters: list[list[Any]] = []
        self._curves = pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    # -- fitting ---------------------------------------------------------------------------
    def _lgb_params(self, seed: int, num_leaves: int, lr: float, objective: str, n_class: int,
                    col_wise: bool) -> dict[str, Any]:
        params = {
            "objective": objective, "num_leaves": num_leaves, "learning_rate": lr,
            "min_data_in_leaf": self.cfg["gbdt_min_data_in_leaf"],
            "feature_fraction": self.cfg["gbdt_feature_fraction"],
            "bagging_fraction": self.cfg["gbdt_bagging_fraction"],
            "bagging_freq": 1 if self.cfg["gbdt_bagging_fraction"] < 1 else 0,
            "lambda_l2": self.cfg["gbdt_lambda_l2"], "seed": seed, "deterministic": True,
            "force_col_wise": col_wise, "force_row_wise": not col_wise, "max_bin": self.cfg["gbdt_max_bin"],
            "num_threads": self._threads(), "verbosity": -1, "use_missing": True, "zero_as_missing": False,
            "feature_pre_filter": False,
        }
        if objective == "multiclass":
            params["num_class"] = n_class
        return params

    @staticmethod
    def col_wise(n_rows: int, n_features: int) -> bool:
        """The forced histogram layout: column-wise for wide data (features >= rows), else row-wise."""
        return n_features >= n_rows

    def _threads(self) -> int:
        """The job's threads: the ``threads`` setting when > 0, else torch's intra-op thread count."""
        return int(self.params.get("threads") or 0) or max(1, torch.get_num_threads())

    def _binned(self, xt: np.ndarray, xv: np.ndarray, params: dict[str, Any]) -> tuple[Any, Any]:
        """The seed's training features binned once, and the validation features with its bin mappers.

        Raw data is freed after binning, so a later parameter change that would need re-binning
        raises instead of silently re-binning per label.
        """
        import lightgbm as lgb

        dtrain = lgb.Dataset(xt, np.zeros(len(xt)), params=params, free_raw_data=True).construct()
        dval = lgb.Dataset(xv, np.zeros(len(xv)), reference=dtrain, params=params, free_raw_data=True).construct()
        return dtrain, dval

    @staticmethod
    def _rows(binned: Any, rows: np.ndarray, y: np.ndarray) -> Any:
        """Rows ``rows`` of a binned Dataset (shared bin mappers, no re-binning) labelled ``y``."""
        return binned.subset(rows.tolist()).construct().set_label(y)

    def _fit_one(self, binned: tuple[Any, Any], x: tuple[np.ndarray, np.ndarray], idx: tuple[np.ndarray, np.ndarray],
                 yt: np.ndarray, yv: np.ndarray, seed: int, objective: str, n_class: int, col_wise: bool,
                 what: str) -> tuple[str, list[dict[str, Any]]]:
        """Grid × early stopping for one output model on rows ``idx`` (train, val) of the seed's binned
        Datasets (raw features ``x`` for the losses); returns the chosen model string and the grid's rows."""
        import lightgbm as lgb

        if yv.size == 0:
            raise ValueError(f"gbdt: {what} has no labelled validation rows to early-stop and choose the grid on")
        dtrain, dval = self._rows(binned[0], idx[0], yt), self._rows(binned[1], idx[1], yv)
        xt, xv = x[0][idx[0]], x[1][idx[1]]
        rows, best = [], None
        for num_leaves in self.cfg["gbdt_num_leaves"]:
            for lr in self.cfg["gbdt_learning_rate"]:
                params = self._lgb_params(seed, num_leaves, lr, objective, n_class, col_wise)
                booster = lgb.train(params, dtrain, num_boost_round=self.cfg["gbdt_max_rounds"], valid_sets=[dval],
                                    valid_names=["val"],
                                    callbacks=[lgb.early_stopping(self.cfg["gbdt_early_stopping"], verbose=False)])
                it = int(booster.best_iteration) or booster.current_iteration()
                text = booster.model_to_string(num_iteration=it)
                rebuilt = lgb.Booster(model_str=text)
                threads = self._threads()
                pt, pv = rebuilt.predict(xt, num_threads=threads), rebuilt.predict(xv, num_threads=threads)
                if objective == "multiclass":
                    tl, vl = _multi_loss(yt.astype(int), pt), _multi_loss(yv.astype(int), pv)
                else:
                    tl, vl = _binary_loss(yt, pt), _binary_loss(yv, pv)
                rows.append({"num_leaves": num_leaves, "learning_rate": lr, "best_iteration": it,
                             "train_loss": tl, "val_loss": vl})
                if best is None or vl < best[0] - 1e-12:
                    best = (vl, len(rows) - 1, text)
        assert best is not None
        rows[best[1]]["chosen"] = True
        return best[2], rows

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        dims = train.dims()
        task = train.task
        xv = gbdt_features(val, dims)
        yt_all, yv_all = train.y.numpy().astype(np.float64), val.y.numpy().astype(np.float64)
        n_out = yt_all.shape[1]
        self.seeds = [int(s) for s in seeds]
        self.models, rows = [], []
        shared = protocol.is_identity and train.n <= BIN_SAMPLE  # the same bins for every seed
        binned = None
        for seed in self.seeds:
            if binned is None or not shared:
                view = train
                if not protocol.is_identity:
                    view = train.with_mask(protocol.apply(train.mask, torch.Generator().manual_seed(seed)))
                xt = gbdt_features(view, dims)
                col_wise = self.col_wise(*xt.shape)
                objective = "multiclass" if task == "multiclass" else "binary"
                base = self._lgb_params(seed, self.cfg["gbdt_num_leaves"][0], self.cfg["gbdt_learning_rate"][0],
                                        objective, n_out, col_wise)
                binned = self._binned(xt, xv, base)
            models: list[str | list[float]] = []
            if task == "multiclass":
                kt, kv = ~np.isnan(yt_all).any(1), ~np.isnan(yv_all).any(1)
                ct, cv = yt_all[kt].argmax(1), yv_all[kv].argmax(1)
                if np.unique(ct).size < 2:
                    freq = np.bincount(ct, minlength=n_out) / max(ct.size, 1) if ct.size else np.full(n_out, 1 / n_out)
                    models.append([float(v) for v in freq])
                else:
                    text, grid = self._fit_one(binned, (xt, xv), (np.flatnonzero(kt), np.flatnonzero(kv)),
                                               ct.astype(float), cv.astype(float), seed, "multiclass", n_out, col_wise,
                                               "the multiclass model")
                    models.append(text)
                    rows += [{"seed": seed, "label": "*", **r} for r in grid]
            else:
                for j, label in enumerate(train.labels):
                    kt, kv = ~np.isnan(yt_all[:, j]), ~np.isnan(yv_all[:, j])
                    yt = yt_all[kt, j]
                    if yt.size == 0 or yt.min() == yt.max():
                        models.append([float(np.clip(yt.mean() if yt.size else 0.5, 1e-4, 1 - 1e-4))])
                        continue
                    text, grid = self._fit_one(binned, (xt, xv), (np.flatnonzero(kt), np.flatnonzero(kv)), yt,
                                               yv_all[kv, j], seed, "binary", 1, col_wise, f"label {label!r}")
                    models.append(text)
                    rows += [{"seed": seed, "label": label, **r} for r in grid]
            self.models.append(models)
        self.settings = {"dims": dims, "task": task, "labels": list(train.labels), "params": {
            k: self.cfg[k] for k in DEFAULTS}, "criterion": "validation log-loss at the early-stopped iteration"}
        self._boosters = []
        curves = pd.DataFrame(rows)
        if not curves.empty:
            curves["chosen"] = curves.get("chosen", pd.Series(False, index=curves.index)).fillna(False).astype(bool)
            curves.insert(1, "epoch", curves.groupby(["seed", "label"]).cumcount())
        self._curves = curves if not curves.empty else self._curves

    # -- prediction ------------------------------------------------------------------------
    def _booster_sets(self) -> list[list[Any]]:
        import lightgbm as lgb

        if not self._boosters:
            self._boosters = [[lgb.Booster(model_str=m) if isinstance(m, str) else np.asarray(m, dtype=np.float64)
                               for m in models] for models in self.models]
        return self._boosters

    def predict(self, data: TensorData) -> Prediction:
        if not self.models:
            raise RuntimeError("gbdt.predict called before fit (or load_method)")
        x = gbdt_features(data, self.settings["dims"])
        n_out = len(self.settings["labels"])
        threads = self._threads()
        out = []
        for models in self._booster_sets():
            prob = np.zeros((data.n, n_out))
            if self.settings["task"] == "multiclass":
                m = models[0]
                prob[:] = (np.broadcast_to(m, prob.shape) if isinstance(m, np.ndarray)
                           else m.predict(x, num_threads=threads))
            else:
                for j, m in enumerate(models):
                    prob[:, j] = m[0] if isinstance(m, np.ndarray) else m.predict(x, num_threads=threads)
            out.append(prob.astype(np.float32))
        return Prediction(np.ascontiguousarray(np.stack(out)))

    def cost(self, batch: TensorData) -> dict[str, Any]:
        """One seed's trees on ``batch`` (:func:`gbdt_cost`): comparisons, not floating-point FLOPs."""
        return {**gbdt_cost(self.models[0], gbdt_features(batch, self.settings["dims"])),
                "params_note": "split thresholds + leaf values over all trees",
                "flops_note": "threshold comparisons + one leaf-value addition per tree (not FLOPs)"}

    def curves(self) -> pd.DataFrame:
        return self._curves

    # -- persistence -----------------------------------------------------------------------
    def export(self) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
        if not self.models:
            raise RuntimeError("gbdt.export called before fit")
        states, constants = [], []
        for models in self.models:
            state, const = {}, {}
            for j, m in enumerate(models):
                if isinstance(m, str):
                    state[f"booster.{j}"] = _encode(m)
                else:
                    const[str(j)] = list(m)
            state["n_models"] = torch.tensor([len(models)])
            states.append(state)
            constants.append(const)
        return {**self.settings, "constants": constants}, states

    def restore(self, settings: dict[str, Any], states: list[dict[str, torch.Tensor]]) -> None:
        settings = dict(settings)
        constants = settings.pop("constants")
        self.settings = settings
        self.settings["dims"] = {m: [int(d) for d in ds] for m, ds in settings["dims"].items()}
        self.models = []
        for state, const in zip(states, constants, strict=True):
            n = int(state["n_models"][0])
            self.models.append([_decode(state[f"booster.{j}"]) if f"booster.{j}" in state
                                else [float(v) for v in const[str(j)]]
                                for j in range(n)])
        self._boosters = []
