"""UNet presets: class-conditional ``diffusers.UNet2DModel`` configurations.

Every preset has at least one attention block, because attention blocks are where the stack's
silent per-sample-gradient bug lives (their output reaches the next convolution with channels_last
strides; see dpbench/privacy/grad_samplers.py) and where the LoRA/attention-only methods attach.
``num_class_embeds`` reserves one extra row, the *null class*, used for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class UNetPreset:
    name: str
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    extra: dict = field(default_factory=dict)

    def unet_config(self, image_size: int, channels: int, num_classes: int) -> dict:
        return dict(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=self.block_out_channels,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            attention_head_dim=self.attention_head_dim,
            num_class_embeds=num_classes + 1,  # last row = null class (guidance)
            **self.extra,
        )

    def as_dict(self) -> dict:
        return asdict(self)


TINY = UNetPreset(
    name="tiny",
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)

SMALL = UNetPreset(
    name="small",
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=16,
    attention_head_dim=16,
)

PAPER_BASE = UNetPreset(
    name="ldm-base",
    block_out_channels=(64, 128, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    norm_num_groups=32,
    attention_head_dim=32,
)

DDPM32 = UNetPreset(
    name="ddpm32",
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    norm_num_groups=32,
    attention_head_dim=64,
)
