# The DDP model of ddp_convnext.py with a Swin-T backbone instead.
_base_ = './ddp_convnext.py'
backbone_norm_cfg = dict(type='LN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        init_cfg=dict(type='Pretrained', checkpoint=None),
        pretrain_img_size=224,
        in_channels=3,
        embed_dims=96,
        patch_size=4,
        window_size=7,
        mlp_ratio=4,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        strides=(4, 2, 2, 2),
        out_indices=(0, 1, 2, 3),
        qkv_bias=True,
        qk_scale=None,
        patch_norm=True,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.3,
        use_abs_pos_embed=False,
        act_cfg=dict(type='GELU'),
        norm_cfg=backbone_norm_cfg))
