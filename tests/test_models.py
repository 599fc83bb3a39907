"""Models of MasKD Table 3: shapes, tap points, paper params/FLOPs, backbone weights and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from benchmark.errors import UserError
from benchmark.models import (
    BACKBONE_OF,
    build_backbone,
    build_segmentor,
    count_gflops,
    count_params_m,
    list_models,
    load_backbone_weights,
    measure_gflops,
)

# MasKD (ICLR 2023) Table 3: params (M) and FLOPs (G) at 1024×2048.
PAPER = {
    "deeplabv3_r101": (61.1, 2371.7),
    "deeplabv3_r18": (13.6, 572.0),
    "deeplabv3_mbv2": (3.2, 128.9),
    "pspnet_r18": (12.9, 507.4),
}
X = torch.randn(1, 3, 64, 128)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_segmentor(name).eval() for name in PAPER}


def test_registry() -> None:
    assert set(PAPER) | {"deeplabv3_r50", "pspnet_r101"} <= set(list_models())
    assert BACKBONE_OF["deeplabv3_mbv2"] == "mobilenetv2"
    assert BACKBONE_OF["pspnet_r18"] == "resnet18"


@pytest.mark.parametrize("name", list(PAPER))
def test_forward_os8_shapes_taps_and_aux(models: dict[str, nn.Module], name: str) -> None:
    model = models[name]
    modules = dict(model.named_modules())
    expected_taps = {"logits", "feat", "backbone"} | ({"aux_logits"} if name != "deeplabv3_mbv2" else set())
    assert set(model.tap_points) == expected_taps
    assert all(path in modules for path in model.tap_points.values())
    seen: dict[str, torch.Tensor] = {}
    handles = [
        modules[path].register_forward_hook(lambda _m, _i, out, tap=tap: seen.__setitem__(tap, out))
        for tap, path in model.tap_points.items()
    ]
    with torch.no_grad():
        out = model(X)
    for handle in handles:
        handle.remove()
    assert out["out"].shape == (1, 19, 8, 16)
    assert seen["logits"] is out["out"]
    assert seen["feat"].shape == (1, 256 if name == "deeplabv3_r101" else 128, 8, 16)
    assert seen["backbone"].shape == (1, model.backbone.out_channels, 8, 16)
    if name == "deeplabv3_mbv2":
        assert "aux" not in out and model.aux_head is None
    else:
        assert out["aux"].shape == (1, 19, 8, 16)
        assert seen["aux_logits"] is out["aux"]


def test_aux_in_train_mode() -> None:
    model = build_segmentor("pspnet_r18", num_classes=5).train()
    out = model(torch.randn(2, 3, 32, 64))
    assert out["out"].shape == out["aux"].shape == (2, 5, 4, 8)


def test_output_stride_16_and_rates() -> None:
    r18 = build_segmentor("deeplabv3_r18", output_stride=16).eval()
    mbv2 = build_segmentor("deeplabv3_mbv2", output_stride=16, aspp_rates=(3, 6, 9)).eval()
    with torch.no_grad():
        assert r18(X)["out"].shape == r18(X)["aux"].shape == (1, 19, 4, 8)
        assert mbv2(X)["out"].shape == (1, 19, 4, 8)
    assert [r18.decode_head.aspp.convs[i][0].dilation for i in (1, 2, 3)] == [(6, 6), (12, 12), (18, 18)]
    assert mbv2.decode_head.aspp.convs[3][0].dilation == (9, 9)
    assert r18.backbone.layer3[0].conv1.stride == (2, 2)
    assert (r18.backbone.layer4[0].conv1.dilation, r18.backbone.layer4[1].conv2.dilation) == ((1, 1), (2, 2))


def test_os8_dilation_matches_official(models: dict[str, nn.Module]) -> None:
    r18, mbv2 = models["deeplabv3_r18"].backbone, models["deeplabv3_mbv2"].backbone
    assert r18.conv3.out_channels == 128 and r18.layer1[0].conv1.in_channels == 128  # v1s stem 64-64-128
    assert [r18.layer3[0].conv1.dilation, r18.layer3[0].conv2.dilation] == [(1, 1), (2, 2)]
    assert [r18.layer4[0].conv1.dilation, r18.layer4[1].conv1.dilation] == [(2, 2), (4, 4)]
    assert r18.layer4[0].downsample[0].stride == (1, 1)
    assert models["deeplabv3_r101"].backbone.layer4[0].conv2.dilation == (2, 2)
    dw = [mbv2.features[i].conv[-3][0] for i in (7, 8, 14, 15)]
    assert [c.dilation for c in dw] == [(1, 1), (2, 2), (2, 2), (4, 4)]
    assert all(c.stride == (1, 1) for c in dw)


@pytest.mark.parametrize("name", list(PAPER))
def test_params_and_flops_match_paper(models: dict[str, nn.Module], name: str) -> None:
    params, gflops = PAPER[name]
    assert count_params_m(models[name]) == pytest.approx(params, rel=0.02)
    assert measure_gflops(name) == pytest.approx(gflops, rel=0.05)
    # The paper's counter ignores dilation in the output size, so it exceeds the true MAC count.
    assert measure_gflops(name, unit="mac") < 0.97 * gflops


def test_flop_units_on_hand_computable_convs() -> None:
    with torch.device("meta"):
        conv = nn.Conv2d(3, 8, 3, padding=1)
        dilated = nn.Conv2d(3, 4, 3, padding=2, dilation=2)
    macs = 3 * 8 * 9 * 16 * 16
    assert count_gflops(conv, 16, 16, "flop") == pytest.approx(2 * macs / 1e9)
    assert count_gflops(conv, 16, 16, "mac") == pytest.approx(macs / 1e9)
    assert count_gflops(conv, 16, 16, "paper") == pytest.approx(macs / 1e9)
    assert count_gflops(dilated, 8, 8, "mac") == pytest.approx(3 * 4 * 9 * 8 * 8 / 1e9)
    assert count_gflops(dilated, 8, 8, "paper") == pytest.approx(3 * 4 * 9 * 10 * 10 / 1e9)
    with pytest.raises(UserError, match="unknown FLOP unit"):
        count_gflops(conv, 16, 16, "gmacs")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(PAPER))
def test_backbone_state_dict_loads_into_segmentor(name: str) -> None:
    with torch.device("meta"):
        backbone = build_backbone(BACKBONE_OF[name])
        segmentor = build_segmentor(name)
    segmentor.backbone.load_state_dict(backbone.state_dict(), strict=True)
    assert backbone.out_channels == segmentor.backbone.out_channels


def test_load_backbone_weights_wrapped_prefixed_with_classifier(tmp_path: Path) -> None:
    backbone = build_backbone("resnet18")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "r18.pth")
    model = build_segmentor("deeplabv3_r18")
    load_backbone_weights(model, tmp_path / "r18.pth")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, backbone.layer4[1].conv2.weight)


def test_load_torchvision_weights(tmp_path: Path) -> None:
    mbv2 = torchvision.models.mobilenet_v2()  # has features.18 and classifier, both ignored
    torch.save(mbv2.state_dict(), tmp_path / "mbv2.pth")
    model = build_segmentor("deeplabv3_mbv2")
    load_backbone_weights(model, tmp_path / "mbv2.pth")
    assert torch.equal(model.backbone.features[17].conv[0][0].weight, mbv2.features[17].conv[0][0].weight)
    torch.save({"model": torchvision.models.resnet18().state_dict()}, tmp_path / "r18.pth")
    load_backbone_weights(build_segmentor("pspnet_r18", stem="torchvision"), tmp_path / "r18.pth")


def test_load_backbone_weights_errors(tmp_path: Path) -> None:
    model = build_segmentor("deeplabv3_r18")
    with pytest.raises(UserError, match="not found"):
        load_backbone_weights(model, tmp_path / "missing.pth")

    good = tmp_path / "good.pth"
    torch.save(build_backbone("resnet18").state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or not a PyTorch checkpoint"):
        load_backbone_weights(model, truncated)

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="not a state dict"):
        load_backbone_weights(model, tmp_path / "list.pth")

    torch.save(build_backbone("resnet18", stem="torchvision").state_dict(), tmp_path / "tv.pth")
    with pytest.raises(UserError) as err:
        load_backbone_weights(model, tmp_path / "tv.pth")
    message = str(err.value)
    assert "missing" in message and "conv2.weight" in message
    assert "shape mismatch" in message and "conv1.weight (64, 3, 7, 7) vs model (64, 3, 3, 3)" in message
    assert "stem='torchvision'" in message

    torch.save(build_backbone("mobilenetv2").state_dict(), tmp_path / "mbv2.pth")
    with pytest.raises(UserError, match=r"unexpected \(\d+\): features\.0\.0\.weight"):
        load_backbone_weights(model, tmp_path / "mbv2.pth")


def test_build_errors() -> None:
    expected = r"unknown model 'deeplabv3_r19'\. Did you mean 'deeplabv3_r18'\?"
    with pytest.raises(UserError, match=expected) as err:
        build_segmentor("deeplabv3_r19")
    assert all(name in str(err.value) for name in list_models())
    with pytest.raises(UserError, match="output_stride must be 8 or 16"):
        build_segmentor("deeplabv3_r18", output_stride=32)
    assert count_params_m(build_segmentor("pspnet_r18", aspp_rates=(1, 2, 3))) == pytest.approx(12.92, abs=0.01)
    with pytest.raises(UserError, match="three positive integers"):
        build_segmentor("deeplabv3_r18", aspp_rates=(0, 2, 3))
    with pytest.raises(UserError, match="unknown stem 'v1c'"):
        build_segmentor("deeplabv3_r18", stem="v1c")
    with pytest.raises(UserError, match="unknown backbone 'resnet34'"):
        build_backbone("resnet34")


@pytest.mark.parametrize("name", ["resnet18", "resnet101"])
def test_zero_init_residual_makes_every_block_start_as_identity(name: str) -> None:
    torch.manual_seed(0)
    plain = build_backbone(name, output_stride=16)
    torch.manual_seed(0)
    zeroed = build_backbone(name, output_stride=16, zero_init_residual=True)
    blocks = [m for m in zeroed.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == {"resnet18": 8, "resnet101": 33}[name]
    for block in blocks:
        last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        assert not last_bn.weight.any()
        x = torch.randn(1, block.conv1.in_channels, 5, 5)
        block.eval()
        shortcut = block.downsample(x) if block.downsample is not None else x
        assert torch.equal(block(x), torch.relu(shortcut))  # the residual branch adds exactly zero
    differing = {k for k, v in plain.state_dict().items() if not torch.equal(v, zeroed.state_dict()[k])}
    assert differing == {n for n, _ in zeroed.named_parameters() if n.endswith((".bn3.weight", ".bn2.weight"))
                         and ("bn3" in n) == (name == "resnet101")}
