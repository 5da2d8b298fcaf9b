"""The model table: ResNet V1.5 baselines, the paper's BoT50/101/152, the BoTNet-S1 family, timm's BoTNets.

Each model is one row. Numbers from Srinivas et al., "Bottleneck Transformers for Visual Recognition"
(arXiv 2101.11605); ``paper_params`` are the paper's parameter counts in millions (ImageNet head).
"""

from __future__ import annotations

from botnet.models.registry import ModelCfg, register_model

PAPER = "Srinivas et al. 2021, arXiv 2101.11605"
C5 = (False, False, False, True)
# BoTNet-S1: stride-1 c5 (at c4's resolution) with MHSA in every block; SE (ratio 1/16) in the conv
# blocks; SiLU; 4 heads of 128 channels.
S1 = dict(attention=C5, strides=(1, 2, 2, 1), se_ratio=0.0625, act_layer="silu", num_heads=4)
# timm's byoanet BoTNets (weights load with botnet.convert.from_timm): tiered 3x3 stem ("t"), position logits
# from the unscaled q (timm's BottleneckAttn default), MHSA placed as timm interleaves it; ("s" = SiLU).
TIMM = dict(stem="tiered", scale_pos_embed=False, num_heads=4)
TIMM_CFG = dict(input_size=(3, 256, 256), crop_pct=0.95, paper="timm byoanet.py", tags=("timm",))

_ROWS = [
    # ResNet V1.5 baselines: module names and weights match torchvision's resnet50/101/152.
    ModelCfg("resnet26", dict(layers=(2, 2, 2, 2)), tags=("baseline",)),
    ModelCfg("resnet50", dict(layers=(3, 4, 6, 3)), paper_params=25.5, tags=("baseline",)),
    ModelCfg("resnet101", dict(layers=(3, 4, 23, 3)), tags=("baseline",)),
    ModelCfg("resnet152", dict(layers=(3, 8, 36, 3)), tags=("baseline",)),
    # The paper's BoT50/101/152: MHSA (4 heads) in all three c5 blocks; c2-c4 as ResNet.
    ModelCfg("botnet26", dict(layers=(2, 2, 2, 2), attention=C5, num_heads=4), tags=("cpu",)),
    ModelCfg("botnet50", dict(layers=(3, 4, 6, 3), attention=C5, num_heads=4), paper=PAPER, paper_params=20.8),
    ModelCfg("botnet101", dict(layers=(3, 4, 23, 3), attention=C5, num_heads=4), paper=PAPER),
    ModelCfg("botnet152", dict(layers=(3, 8, 36, 3), attention=C5, num_heads=4), paper=PAPER),
    # BoTNet-S1 family (paper Table 7 / Fig. 4: T3-T7) at their training resolutions.
    ModelCfg("botnet_s1_59", dict(layers=(3, 4, 6, 6), **S1), paper=PAPER + " (T3)", paper_params=33.5),
    ModelCfg("botnet_s1_110", dict(layers=(3, 4, 23, 6), **S1), paper=PAPER + " (T4)", paper_params=54.7),
    ModelCfg(
        "botnet_s1_128",
        dict(layers=(3, 4, 23, 12), **S1),
        input_size=(3, 256, 256),
        paper=PAPER + " (T5)",
        paper_params=75.1,
    ),
    ModelCfg(
        "botnet_s1_77",
        dict(layers=(3, 4, 6, 12), **S1),
        input_size=(3, 320, 320),
        paper=PAPER + " (T6)",
        paper_params=53.9,
    ),
    ModelCfg(
        "botnet_s1_128_384",
        dict(layers=(3, 4, 23, 12), **S1),
        input_size=(3, 384, 384),
        crop_pct=1.0,
        paper=PAPER + " (T7)",
        paper_params=75.1,
    ),
    # timm's botnet26t_256 (MHSA in the last c4 block and both c5 blocks) and botnet50ts_256 (the last c3
    # block, c4 blocks 1, 3, 5 and the middle c5 block; not the paper's layout).
    ModelCfg("timm_botnet26t_256", dict(layers=(2, 2, 2, 2), attention=(False, False, 1, True), **TIMM), **TIMM_CFG),
    ModelCfg(
        "timm_botnet50ts_256",
        dict(layers=(3, 4, 6, 3), attention=(False, 1, (1, 3, 5), (1,)), act_layer="silu", **TIMM),
        **TIMM_CFG,
    ),
]

for _row in _ROWS:
    register_model(_row)
