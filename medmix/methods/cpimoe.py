"""CP-IMoE: collaborative prompt-guided interactive mixture of experts (Li et al., CVPR 2026;
supplementary in ``shared/seeds/000_*.txt``, reference code ``lijing-coder/CP-IMoE``).

Two-stage design on frozen backbones (the supplementary's Table S3 "frozen" rows): the
backbones are the cached stage-1 expert committees; the modality-specific, redundant and
synergistic experts are each pre-trained in their own stage (:mod:`medmix.training.cpimoe_stages`,
in the workflow separate cached ``stage`` jobs) and frozen; the last stage (this ``fit``) trains
only the prompt maps (+ learned static prompts), the router and the decision head
(:class:`~medmix.models.cpimoe.CPIMoENet`, whose docstring defines the M-modality form).

``cpimoe_router`` is the supplementary's *classic router* (Fig. S2): the same experts and
stages, router input = the modality features, no prompts (``prompts: false``).

Params (``method_params.cpimoe``), beyond the ``training`` keys:
``hidden_dim`` (D, default 256; reference 2048 = ResNet50 width), ``dropout`` (0.3, the
reference's), ``prompts`` (true), ``static_prompt`` (``learned`` | ``fixed``: the reference's
constant vectors), ``max_patterns`` (64), ``missing_input`` (``present_set`` | ``zero_fill``: the
reference's zero vectors), ``interaction_loss_weight`` (1.0), ``push_margin`` (2.0).

Deviations (documented, not options): the reference simulates missingness inside ``forward``
(the first ``p`` fraction of each batch); here the train protocol masks inputs per epoch
(``medmix.protocols`` kind ``missing_one``, an exact fraction of random samples). The shared
trainer's AdamW schedule replaces Adam + cosine + SWA. Backbone fine-tuning (the paper's
ResNet50 "finetuning" rows) is outside this two-stage design on cached embeddings.

``Prediction.extras["gate"]`` holds the per-sample router weights ``[S, N, M + 2]`` (columns
``specific:<m>``, ``redundant``, ``synergistic``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.base import FusionMethod, Prediction
from medmix.methods.simple_fusion import NetEnsembleState, TaskObjective, check_lr_params
from medmix.models.cpimoe import CPIMoENet
from medmix.models.losses import to_probabilities
from medmix.protocols import Protocol, prefit_view
from medmix.training import cpimoe_stages as stages
from medmix.training.trainer import (
    EnsembleTrainer,
    Member,
    TrainConfig,
    autocast,
    cpu_threads,
    resolve_runtime,
    seeded_init,
)

LAST_STAGE_KEYS = ("prompts", "static_prompt", "max_patterns")


@register_method("cpimoe")
class CPIMoE(NetEnsembleState, FusionMethod):
    extra_params: ClassVar[tuple[str, ...]] = (*stages.STAGE_KEYS, *LAST_STAGE_KEYS)
    #: Pre-training stages: their module (stage_plan / stage_params / run_stage) and the method
    #: name whose params and output folder they use (shared by ``cpimoe_router``).
    stage_module: ClassVar[str] = "medmix.training.cpimoe_stages"
    stage_owner: ClassVar[str] = "cpimoe"
    default_prompts: ClassVar[bool] = True

    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        check_lr_params(self.params, self.name)
        self.train_config = TrainConfig.from_params(self.params)
        self.models: list[CPIMoENet] = []
        self.settings: dict[str, Any] = {}
        self.pretrained: dict[str, dict[str, Any]] | None = None
        self._curves = pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    # -- stages -----------------------------------------------------------------------------------
    def load_stages(self, folders: dict[str, str]) -> None:
        """Use the stage outputs in ``folders`` (stage name -> folder) instead of training them."""
        self.pretrained = {name: stages.load_stage(path) for name, path in folders.items()}

    def _net_settings(self, train: TensorData) -> dict[str, Any]:
        p = {**stages.DEFAULTS, **self.params}
        return {"modalities": train.modalities, "dims": train.dims(), "n_out": len(train.labels),
                "hidden": int(p["hidden_dim"]), "dropout": float(p["dropout"]),
                "prompts": bool(p.get("prompts", self.default_prompts)),
                "static_prompt": str(p.get("static_prompt", "learned")),
                "max_patterns": int(p.get("max_patterns", 64)), "missing_input": str(p["missing_input"])}

    def build(self, s: dict[str, Any]) -> CPIMoENet:
        return CPIMoENet(s["modalities"], s["dims"], s["hidden"], s["n_out"], s["dropout"], prompts=s["prompts"],
                         static_prompt=s["static_prompt"], max_patterns=s["max_patterns"],
                         missing_input=s["missing_input"])

    def _load_experts(self, net: CPIMoENet, done: dict[str, dict[str, Any]], seed: int) -> None:
        plan = stages.stage_plan(net.modalities)
        absent = [s for s in plan if s not in done]
        if absent:
            raise ValueError(f"{self.name}: stage outputs missing for {absent} (have {sorted(done)})")
        want = stages.stage_params(self.params)
        for name in plan:
            got = done[name]
            if got.get("params") != want or got.get("dims") != self.settings["dims"]:
                raise ValueError(f"{self.name}: stage {name} ({got.get('folder', 'in memory')}) was trained with "
                                 f"params {got.get('params')} / dims {got.get('dims')}, this fit needs {want} / "
                                 f"{self.settings['dims']}; rerun the stage")
        for m in net.modalities:
            state = stages.stage_state(done[f"specific_{m}"], seed)
            net.adapters[m].load_state_dict(stages._sub(state, "adapter."))
            net.specific[m].load_state_dict(stages._sub(state, "expert."))
        net.redundant.load_state_dict(stages._sub(stages.stage_state(done["redundant"], seed), "expert."))
        net.synergistic.load_state_dict(stages._sub(stages.stage_state(done["synergistic"], seed), "expert."))
        net.freeze_experts()

    # -- contract ---------------------------------------------------------------------------------
    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        self.settings = self._net_settings(train)
        done = (self.pretrained if self.pretrained is not None
                else stages.run_all_stages(prefit_view(train, protocol), val, seeds, self.params))
        members = []
        for seed in seeds:
            net = seeded_init(int(seed), lambda: self.build(self.settings))
            self._load_experts(net, done, int(seed))
            members.append(Member(int(seed), net, None, [(net.trainable_parameters(), 1.0)]))
        trainer = EnsembleTrainer(self.train_config, TaskObjective(train.task))
        self._curves = trainer.fit(members, train, val, protocol, train.modalities)
        self.models = [m.model for m in members]
        self.seeds = [m.seed for m in members]

    def predict(self, data: TensorData) -> Prediction:
        if not self.models:
            raise RuntimeError(f"{self.name}.predict called before fit (or load_method)")
        want = {m: list(ds) for m, ds in self.settings["dims"].items()}
        got = {m: ds for m, ds in data.dims().items() if m in want}
        if got != want:
            raise ValueError(f"{self.name}: input expert dims {got} differ from the model's {want}")
        device, dtype = resolve_runtime(self.train_config)
        chunk = self.train_config.eval_batch_size
        probs: list[list[np.ndarray]] = [[] for _ in self.models]
        gates: list[list[np.ndarray]] = [[] for _ in self.models]
        with cpu_threads(self.train_config.threads), torch.no_grad():
            for lo in range(0, data.n, chunk):
                hi = min(data.n, lo + chunk)
                x = {m: [t[lo:hi].to(device, dtype or torch.float32) for t in data.x[m]] for m in want}
                mask = {m: data.mask[m][lo:hi].to(device) for m in want}
                for s, net in enumerate(self.models):
                    with autocast(device, dtype):
                        logits, gate = net.eval().forward_all(x, mask)
                    probs[s].append(to_probabilities(logits, data.task).cpu().numpy())
                    gates[s].append(gate.float().cpu().numpy())
        n_out, n_exp = self.settings["n_out"], len(want) + 2
        prob = np.stack([np.concatenate(p) if p else np.zeros((0, n_out), np.float32) for p in probs])
        gate = np.stack([np.concatenate(g) if g else np.zeros((0, n_exp), np.float32) for g in gates])
        return Prediction(prob, {"gate": gate}, {"gate": self.models[0].expert_names})


@register_method("cpimoe_router")
class CPIMoEClassicRouter(CPIMoE):
    """The supplementary's classic router: CP-IMoE's experts, router on the features, no prompts."""

    default_prompts: ClassVar[bool] = False
