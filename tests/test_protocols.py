"""Test-time masks: seeded by the protocol's name and parameters, at the declared rate."""

from __future__ import annotations

import torch

from medmix.protocols import parse_protocols


def _mask(n: int = 4000) -> dict[str, torch.Tensor]:
    return {"note": torch.ones(n, 2, dtype=torch.bool), "frontal": torch.ones(n, 1, dtype=torch.bool)}


def _masks(section: dict) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for protocol in parse_protocols(section):
        gen = torch.Generator().manual_seed(protocol.seed(10_000))
        out[protocol.name] = protocol.apply(_mask(), gen)
    return out


SECTION = {
    "none": {"kind": "none"},
    "drop_one_note_30": {"kind": "drop_one", "modality": "note", "p": 0.3},
    "random_drop_50": {"kind": "random_drop", "p": 0.5},
}


def test_reordering_protocols_changes_no_mask():
    forward = _masks(SECTION)
    backward = _masks(dict(reversed(list(SECTION.items()))))
    assert forward.keys() == backward.keys()
    for name in forward:
        for m in forward[name]:
            assert torch.equal(forward[name][m], backward[name][m]), (name, m)


def test_seed_depends_on_name_and_rate_only():
    a, b, c = parse_protocols({"x": {"kind": "random_drop", "p": 0.3}, "y": {"kind": "random_drop", "p": 0.3},
                               "z": {"kind": "random_drop", "p": 0.5}})[1:]
    again = parse_protocols({"x": {"kind": "random_drop", "p": 0.3}})[1]
    assert a.seed() == again.seed()
    assert len({a.seed(), b.seed(), c.seed()}) == 3


def test_drop_rates_within_tolerance():
    masks = _masks(SECTION)
    n = 4000
    tol = 4 * (0.25 / n) ** 0.5  # four binomial standard deviations
    note_kept = masks["drop_one_note_30"]["note"][:, 0].float().mean().item()
    assert abs((1 - note_kept) - 0.3) < tol
    assert masks["drop_one_note_30"]["frontal"].all()
    for m in ("note", "frontal"):
        dropped = 1 - masks["random_drop_50"][m][:, 0].float().mean().item()
        assert abs(dropped - 0.5) < tol, (m, dropped)
