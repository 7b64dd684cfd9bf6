"""Remote code only at an exact commit; every loader refuses a checkpoint with missing tensors.

Rule for remote code (extractors/hf_common.check_remote_code_pin): a registry entry / bridge that
needs ``trust_remote_code``, a config that allows it, and an exact 40-hex commit; a ``local_dir``
must be a Hugging Face cache snapshot folder ``.../snapshots/<commit>/`` of that same commit.

Missing tensors: each loader family is given a tiny random-weight checkpoint with one tensor (or
layer) removed and must refuse it instead of running with freshly initialised weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import build_biomedclip, build_chronos, build_qwen2
from tiny_text_models import tiny_bert, tiny_qwen2, words

from extractors.base import ModelUnavailableError
from extractors.hf_common import HubExpert, check_remote_code_pin, is_commit, load_state_complete
from extractors.knowledge.bridge import Maira2Bridge
from extractors.knowledge.encoders import EncoderSpec, EncoderUnavailableError, MedCPTEncoder, MiniLMEncoder
from extractors.knowledge.projection import token_mean_embeddings
from extractors.registry import ExpertSpec, create_extractor

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


# ----------------------------------------------------------------------------- remote code
def test_commit_is_a_full_match() -> None:
    assert is_commit(SHA)
    for bad in (SHA + "\n", SHA[:39], SHA + "0", SHA[:12], "main", SHA.upper(), None, 0, f" {SHA}"):
        assert not is_commit(bad), bad


class _RemoteExpert(HubExpert):
    spec = ExpertSpec(name="remote_test_double", kinds=("text",), role="general", dim=4, hub_id="org/remote",
                      trust_remote_code=True)


class _PlainExpert(HubExpert):
    spec = ExpertSpec(name="plain_test_double", kinds=("text",), role="general", dim=4, hub_id="org/plain")


def _snapshot(root: Path, commit: str) -> Path:
    folder = root / "models--org--remote" / "snapshots" / commit
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_hub_expert_remote_code_refusals(tmp_path: Path) -> None:
    plain_dir = tmp_path / "copied_weights"
    plain_dir.mkdir()
    cases = [
        ({"revision": SHA}, "allow_remote_code: true"),
        ({"allow_remote_code": True, "revision": "main"}, "pinned commit"),
        ({"allow_remote_code": True, "revision": SHA[:12]}, "pinned commit"),
        ({"allow_remote_code": True, "revision": SHA + "\n"}, "pinned commit"),
        ({"allow_remote_code": True, "revision": SHA, "local_dir": str(plain_dir)}, "does not record the commit"),
        ({"allow_remote_code": True, "revision": SHA, "local_dir": str(_snapshot(tmp_path / "a", OTHER))},
         f"is snapshot {OTHER} but revision pins {SHA}"),
        ({"allow_remote_code": True, "revision": SHA[:39], "local_dir": str(_snapshot(tmp_path / "b", SHA))},
         "pinned commit"),
    ]
    for settings, message in cases:
        with pytest.raises(ModelUnavailableError, match=message):
            _RemoteExpert(settings).remote_code()


def test_hub_expert_remote_code_accepted_at_the_pinned_commit(tmp_path: Path) -> None:
    assert _RemoteExpert({"allow_remote_code": True, "revision": SHA}).remote_code() is True
    snap = _snapshot(tmp_path, SHA)
    ext = _RemoteExpert({"allow_remote_code": True, "revision": SHA, "local_dir": str(snap) + "/"})
    kwargs = ext.hub_kwargs()
    assert kwargs["trust_remote_code"] is True and kwargs["revision"] is None  # the folder is the snapshot
    link = tmp_path / "maira_link"
    link.symlink_to(snap, target_is_directory=True)  # a link to the snapshot folder resolves to it
    check_remote_code_pin("x", SHA, str(link))
    # An entry that does not need remote code never gets it, whatever the config says.
    assert _PlainExpert({"allow_remote_code": True, "revision": "main"}).remote_code() is False


def test_maira2_bridge_pins_local_dir_too(tmp_path: Path) -> None:
    plain_dir = tmp_path / "maira2"
    plain_dir.mkdir()
    rev = Maira2Bridge.default_revision
    refused = [
        ({"allow_remote_code": True, "local_dir": str(plain_dir)}, "does not record the commit"),
        ({"allow_remote_code": True, "revision": rev + "\n"}, "pinned commit"),
        ({"allow_remote_code": True, "revision": rev[:10]}, "pinned commit"),
        ({"allow_remote_code": True, "local_dir": str(_snapshot(tmp_path / "o", OTHER))}, "is snapshot"),
        ({"revision": rev}, "allow_remote_code: true"),
        ({"allow_remote_code": True, "model_id": "someone/maira-2-fork", "revision": rev}, "granted only to"),
    ]
    for settings, message in refused:
        with pytest.raises(ModelUnavailableError, match=message):
            Maira2Bridge(settings).load()
    # The pinned snapshot passes the pin check: loading then fails only because the folder is empty.
    snap = _snapshot(tmp_path / "ok", rev)
    with pytest.raises(ModelUnavailableError, match=r"bridge maira2: cannot load"):
        Maira2Bridge({"allow_remote_code": True, "local_dir": str(snap)}).load()


# ----------------------------------------------------------------------------- missing tensors
def _drop(weights: Path, pattern: str) -> list[str]:
    tensors = load_file(weights)
    dropped = [k for k in tensors if pattern in k]
    assert dropped, f"no tensor matches {pattern!r} in {weights}"
    save_file({k: v.contiguous() for k, v in tensors.items() if k not in dropped}, weights)
    return dropped


def test_chronos_refuses_a_checkpoint_missing_a_tensor(tmp_path: Path) -> None:
    folder = build_chronos(tmp_path / "chronos")
    assert create_extractor("chronos_small", {"local_dir": str(folder)}).load() is None  # complete: loads
    dropped = _drop(folder / "model.safetensors", "encoder.block.1.layer.1.DenseReluDense.wo")
    with pytest.raises(ModelUnavailableError, match=rf"lacks {len(dropped)} of the model's tensors"):
        create_extractor("chronos_small", {"local_dir": str(folder)}).load()


def test_minilm_expert_refuses_a_checkpoint_missing_a_tensor(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path / "minilm"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lung", "clear"]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=7, hidden_size=384, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=32)).save_pretrained(folder)
    create_extractor("minilm_l6", {"local_dir": str(folder)}).load()  # complete: loads
    _drop(folder / "model.safetensors", "encoder.layer.1.output.dense.weight")
    with pytest.raises(ModelUnavailableError, match=r"'minilm_l6'.*lacks 1 of the model's tensors"):
        create_extractor("minilm_l6", {"local_dir": str(folder)}).load()


def test_medcpt_and_sentence_transformer_encoders_refuse_missing_tensors(tmp_path: Path) -> None:
    tiny_bert(tmp_path / "medcpt", ["lung", "clear"], seed=0)
    spec = EncoderSpec("medcpt", "ncbi/MedCPT-Query-Encoder", "rev", source=str(tmp_path / "medcpt"))
    assert MedCPTEncoder(spec).dim == 32  # complete: loads
    _drop(tmp_path / "medcpt" / "model.safetensors", "encoder.layer.0.attention.self.query.weight")
    with pytest.raises(EncoderUnavailableError, match=r"lacks 1 of the model's tensors"):
        MedCPTEncoder(spec)

    tiny_bert(tmp_path / "st", ["lung", "clear"], seed=1)  # a plain HF folder: sentence-transformers adds mean pooling
    st_spec = EncoderSpec("minilm", "sentence-transformers/all-MiniLM-L6-v2", None, source=str(tmp_path / "st"))
    assert MiniLMEncoder(st_spec).dim == 32
    _drop(tmp_path / "st" / "model.safetensors", "encoder.layer.1.")
    with pytest.raises(EncoderUnavailableError, match=r"lacks \d+ of the model's tensors"):
        MiniLMEncoder(st_spec)


def test_projection_language_model_refuses_missing_tensors(tmp_path: Path) -> None:
    build_qwen2(tmp_path / "lm", layers=1)  # Qwen2ForCausalLM checkpoint, read as Qwen2Model (as Qwen2-0.5B is)
    assert token_mean_embeddings(str(tmp_path / "lm"), None, ["renal mass"],
                                 ["the patient has a small left pleural effusion"]).shape == (1, 896)
    _drop(tmp_path / "lm" / "model.safetensors", "layers.0.mlp.down_proj")
    with pytest.raises(ModelUnavailableError, match=r"projection language model.*lacks 1"):
        token_mean_embeddings(str(tmp_path / "lm"), None, ["renal mass"],
                              ["the patient has a small left pleural effusion"])


def test_rag_expert_language_model_refuses_missing_tensors(tmp_path: Path) -> None:
    from extractors.knowledge.index import build_index
    from extractors.knowledge.kb import ingest, read_kb

    kb = tmp_path / "kb.parquet"
    ingest("demo", kb)
    vocab = words([f"{t.title} {t.text}" for t in read_kb(kb)] + ["a note"])
    models = tmp_path / "models"
    tiny_bert(models / "query_encoder", vocab, seed=1)
    tiny_bert(models / "article_encoder", vocab, seed=2)
    tiny_qwen2(models / "lm", vocab)
    settings = {"local_dir": str(models), "options": {"index_dir": str(tmp_path / "index")}}
    enc, lm = create_extractor("rag_medcpt_qwen2", settings).index_specs()
    build_index(kb, tmp_path / "index", enc, lm)
    create_extractor("rag_medcpt_qwen2", settings).load()  # complete: loads
    _drop(models / "lm" / "model.safetensors", "layers.0.self_attn.o_proj")
    with pytest.raises(ModelUnavailableError, match=r"rag_medcpt_qwen2'?: language model.*lacks 1"):
        create_extractor("rag_medcpt_qwen2", settings).load()


def test_open_clip_loader_refuses_missing_tensors(tmp_path: Path) -> None:
    folder = build_biomedclip(tmp_path / "biomedclip")
    create_extractor("biomedclip", {"local_dir": str(folder)}).load()  # complete: loads
    _drop(folder / "open_clip_model.safetensors", "visual.trunk.blocks.0.mlp.fc2.weight")
    with pytest.raises(ModelUnavailableError, match=r"[Mm]issing key"):
        create_extractor("biomedclip", {"local_dir": str(folder)}).load()


def test_state_dict_loaders_refuse_missing_and_foreign_tensors() -> None:
    """Merlin's image tower and HistGen load through load_state_complete."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = model.state_dict()
    load_state_complete(model, dict(state), "x", "ckpt.pt")  # complete: loads
    partial = {k: v for k, v in state.items() if k != "1.bias"}
    with pytest.raises(ModelUnavailableError,
                       match=r"ckpt\.pt' lacks 1 of the model's tensors \(e\.g\. \['1\.bias'\]\)"):
        load_state_complete(model, partial, "x", "ckpt.pt")
    with pytest.raises(ModelUnavailableError, match=r"has 1 tensors the model does not"):
        load_state_complete(model, {**state, "2.weight": torch.zeros(1)}, "x", "ckpt.pt")


def test_merlin_refuses_a_checkpoint_without_its_tower_tensors(tmp_path: Path) -> None:
    pytest.importorskip("merlin.models.i3res")
    ext = create_extractor("merlin", {"local_dir": str(tmp_path), "device": "cpu"})
    torch.save({"encode_image.i3_resnet.not_a_layer.weight": torch.zeros(2)},
               tmp_path / ext.settings.preprocessing["checkpoint"])
    with pytest.raises(ModelUnavailableError, match=r"expert 'merlin'.*lacks \d+ of the model's tensors"):
        ext.load()
