"""The ``resnet50`` timm image expert (issue 14): a tiny random-weight timm ResNet saved like the
hub repository (``config.json`` + ``model.safetensors``), loaded through the expert's own path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extractors.base import ModelUnavailableError
from extractors.registry import create_extractor, get_spec
from extractors.runner import run_extraction
from medmix.store import read_features

PRETRAINED_CFG = {  # timm/resnet50.a1_in1k's pretrained_cfg (model card)
    "tag": "a1_in1k", "input_size": [3, 224, 224], "test_input_size": [3, 288, 288], "crop_pct": 0.95,
    "test_crop_pct": 1.0, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "crop_mode": "center", "num_classes": 1000, "pool_size": [7, 7], "first_conv": "conv1", "classifier": "fc",
}


def build_resnet(folder: Path, architecture: str = "resnet14t", seed: int = 0) -> Path:
    """A small bottleneck ResNet (2048-d features like ResNet-50) in timm's hub layout."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model = timm.create_model(architecture, pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": architecture, "num_classes": 10,
                                                    "num_features": 2048, "pretrained_cfg": PRETRAINED_CFG}))
    return folder


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory) -> Path:
    return build_resnet(tmp_path_factory.mktemp("resnet"))


def test_spec():
    spec = get_spec("resnet50")
    assert spec.hub_id == "timm/resnet50.a1_in1k" and spec.dim == 2048 and spec.kinds == ("image",)


@pytest.mark.slow  # builds and runs a random-weight timm ResNet (~20 s on a busy 2-core machine)
def test_resnet50_end_to_end(resnet_dir: Path, tmp_path: Path) -> None:
    import timm
    from timm.data import create_transform, resolve_data_config

    rng = np.random.default_rng(1)
    paths = []
    for k in range(3):
        path = tmp_path / f"img{k}.png"
        Image.fromarray((rng.random((180 + 40 * k, 240, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    extractor = create_extractor("resnet50", {"local_dir": str(resnet_dir), "batch_size": 2})
    run_extraction(extractor, ["a", "b", "c", "d"], [*paths, None], str(tmp_path / "f.parquet"))
    ff = read_features(tmp_path / "f.parquet")
    assert ff.embeddings.shape == (4, 2048) and ff.present.tolist() == [True, True, True, False]
    # Reference: timm directly, the model card's transform, pooled pre-logits features.
    model = timm.create_model("resnet14t", pretrained=False, num_classes=10)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(resnet_dir / "model.safetensors")))
    model.eval()
    transform = create_transform(**resolve_data_config({}, pretrained_cfg=PRETRAINED_CFG), is_training=False)
    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    assert pixels.shape[1:] == (3, 224, 224)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(pixels), pre_logits=True).numpy()
    np.testing.assert_allclose(ff.embeddings[:3], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_incomplete_checkpoint_is_refused(resnet_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    state = load_file(str(resnet_dir / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("layer4.")}, str(broken / "model.safetensors"))
    (broken / "config.json").write_text((resnet_dir / "config.json").read_text())
    with pytest.raises(ModelUnavailableError, match="lacks"):
        create_extractor("resnet50", {"local_dir": str(broken)}).load()
    with pytest.raises(ModelUnavailableError):
        create_extractor("resnet50", {"local_dir": str(tmp_path / "nope")}).load()


def test_module_imports_no_heavy_library() -> None:
    import subprocess
    import sys

    code = ("import sys, extractors.experts.resnet50\n"
            "print(sorted(k for k in ('torch', 'timm', 'safetensors') if k in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
