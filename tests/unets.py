"""Small real U-Nets with random weights, in the shapes of SD1.x, SD2.x and SDXL.

SD1/SD2 use Stability-AI's ``ldm`` (the code A1111 runs, from ``stable-diffusion-sdkit``);
the SDXL shape (no attention at full resolution, several transformer blocks per level,
pooled ``text_time`` conditioning) uses diffusers' ``UNet2DConditionModel``.
"""
from __future__ import annotations

import torch


def no_zero_layers(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ldm zero-initialises output convolutions (training-time trick), which would make
    every output 0 and every comparison trivially equal: give them random weights."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    return model.eval()


def sd1_unet(seed: int = 0, channels: int = 32, context_dim: int = 32) -> torch.nn.Module:
    """SD1.x layout: attention at ds 1, 2, 4 (levels 0..2) and the middle block (level 3)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(seed)
    return no_zero_layers(UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=channels,
                     attention_resolutions=[4, 2, 1], num_res_blocks=1, channel_mult=[1, 2, 2, 2],
                     num_heads=2, use_spatial_transformer=True, transformer_depth=1,
                     context_dim=context_dim, legacy=False), seed)


def sd2_unet(seed: int = 0, channels: int = 32, context_dim: int = 48) -> torch.nn.Module:
    """SD2.x layout: head channels fixed, linear projections in the transformers."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(seed)
    return no_zero_layers(UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=channels,
                     attention_resolutions=[4, 2, 1], num_res_blocks=1, channel_mult=[1, 2, 2, 2],
                     num_head_channels=16, use_spatial_transformer=True, use_linear_in_transformer=True,
                     transformer_depth=1, context_dim=context_dim, legacy=False), seed)


def sd1_inpaint_unet(seed: int = 0) -> torch.nn.Module:
    """SD1.x inpainting shape: 9 input channels (latent + mask + masked-image latent)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(seed)
    return no_zero_layers(UNetModel(image_size=32, in_channels=9, out_channels=4, model_channels=32,
                     attention_resolutions=[2, 1], num_res_blocks=1, channel_mult=[1, 2],
                     num_heads=2, use_spatial_transformer=True, transformer_depth=1,
                     context_dim=32, legacy=False), seed)


def sdxl_unet(seed: int = 0, refiner: bool = False) -> torch.nn.Module:
    """SDXL layout (base, or refiner-like with attention at levels 1 and 2 only)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    if refiner:
        blocks = dict(block_out_channels=(24, 48, 96, 96),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                        "CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                                      "CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=(4, 4, 4, 4))
    else:
        blocks = dict(block_out_channels=(32, 64, 64),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=(1, 2, 3))
    return no_zero_layers(UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=32 + 6 * 8, **blocks), seed)


def run_ldm(unet: torch.nn.Module, x: torch.Tensor, context_dim: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(x.shape[0], 7, context_dim, generator=g)
    t = torch.full((x.shape[0],), 500.0)
    with torch.no_grad():
        return unet(x, t, context=context)


def run_sdxl(unet: torch.nn.Module, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]
    cond = dict(text_embeds=torch.randn(b, 32, generator=g), time_ids=torch.randn(b, 6, generator=g))
    with torch.no_grad():
        return unet(x, torch.full((b,), 500.0), encoder_hidden_states=torch.randn(b, 7, 32, generator=g),
                    added_cond_kwargs=cond).sample
