"""Tiny random-weight models of the foundation-model architectures, saved like their hub repos.

Each builder writes a folder that the real expert loads through its normal code path with
``local_dir=<folder>``: same classes, same file layout (config + weights + tokenizer or processor
config), random weights, a couple of layers. The hidden width equals the real model's embedding
width, because each expert declares that width in its spec; depth and MLP width are tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the patient has no acute cardiopulmonary process . heart size is normal . lungs are clear . "
    "there is a small left pleural effusion with basilar atelectasis . no pneumothorax . "
    "renal mass enhancing lesion kidney ct abdomen pelvis history of carcinoma follow up "
    "stable findings compared with prior examination mild cardiomegaly edema opacity"
).split()
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


# -- vision --------------------------------------------------------------------------------
def build_dinov2(folder: Path, hidden: int = 768, seed: int = 0) -> Path:
    """``Dinov2Model`` (2 layers, patch 32) + the model card's processor (256 bicubic, crop 224)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    _seed(seed)
    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=12, mlp_ratio=1,
                          patch_size=32, image_size=224)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(
        do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_normalize=True, image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD, do_convert_rgb=True,
    ).save_pretrained(folder)
    return folder


def build_dinov3(folder: Path, hidden: int = 1024, seed: int = 0) -> Path:
    """``DINOv3ViTModel`` (2 layers, patch 32, 4 register tokens) + its processor (224x224)."""
    import transformers
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    # transformers 4.56-4.x ships only DINOv3ViTImageProcessorFast; 5.x renamed it DINOv3ViTImageProcessor.
    processor = getattr(transformers, "DINOv3ViTImageProcessor", None) or transformers.DINOv3ViTImageProcessorFast
    _seed(seed)
    config = DINOv3ViTConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16,
                             patch_size=32, num_register_tokens=4, image_size=224)
    DINOv3ViTModel(config).save_pretrained(folder)
    processor(size={"height": 224, "width": 224}, image_mean=IMAGENET_MEAN,
              image_std=IMAGENET_STD).save_pretrained(folder)
    return folder


def build_biomedclip(folder: Path, embed_dim: int = 512, seed: int = 0) -> Path:
    """An open_clip model with BiomedCLIP's layout: timm ViT image tower + HF BERT text tower.

    ``open_clip_config.json`` mirrors BiomedCLIP's (timm ViT, linear projection, HF text tower,
    OpenAI CLIP mean/std); the image tower is timm's tiny ``test_vit`` (160 px input) instead of
    ``vit_base_patch16_224``, the text tower's ``hf_model_name`` a local tiny BERT config.
    """
    import open_clip
    from safetensors.torch import save_file
    from transformers import BertConfig

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bert = folder / "text_tower"
    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=64).save_pretrained(bert)
    config = {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 160},
            "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
        },
        "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False,
                                   pretrained_image=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


# -- text ----------------------------------------------------------------------------------
def build_gatortron(folder: Path, hidden: int = 1024, seed: int = 0) -> Path:
    """``MegatronBertModel`` (2 layers) + a BERT WordPiece tokenizer over a tiny vocabulary."""
    from transformers import BertTokenizerFast, MegatronBertConfig, MegatronBertModel

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)),
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
             *list("abcdefghijklmnopqrstuvwxyz0123456789")]
    vocab = list(dict.fromkeys(vocab))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    config = MegatronBertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=16,
                                intermediate_size=64, max_position_embeddings=512)
    MegatronBertModel(config).save_pretrained(folder)
    return folder


def build_qwen2(folder: Path, hidden: int = 896, heads: int = 14, layers: int = 2, seed: int = 0) -> Path:
    """``Qwen2ForCausalLM`` (``layers`` layers, GQA) + a byte-level BPE tokenizer trained on a tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    config = Qwen2Config(vocab_size=bpe.get_vocab_size(), hidden_size=hidden, intermediate_size=64,
                         num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


# -- time series ---------------------------------------------------------------------------
def build_chronos(folder: Path, d_model: int = 512, seed: int = 0) -> Path:
    """``T5ForConditionalGeneration`` (2+1 layers) with Chronos's ``chronos_config`` (real tokenizer settings)."""
    from transformers import T5Config, T5ForConditionalGeneration

    _seed(seed)
    config = T5Config(vocab_size=4096, d_model=d_model, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=1,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    config.chronos_config = {
        "tokenizer_class": "MeanScaleUniformBins", "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
        "context_length": 512, "prediction_length": 64, "n_tokens": 4096, "n_special_tokens": 2,
        "pad_token_id": 0, "eos_token_id": 1, "use_eos_token": True, "model_type": "seq2seq",
        "num_samples": 20, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    }
    config.architectures = ["T5ForConditionalGeneration"]
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder
