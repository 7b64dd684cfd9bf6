"""Metrics, a base package: classification metrics and thresholds (:mod:`.classification`) and the
ranking metrics (:mod:`.ranking`, AUROC / AUPRC, also the trainer's metric early stopping). They
import nothing else of medmix, so training, evaluation and the table jobs all read them from here."""
