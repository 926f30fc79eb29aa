_base_ = './ddp_swin_t_2x8_512x512_160k_ade20k.py'
# ImageNet-pretrained backbone. ddpseg never downloads it: fetch the file and pass its local path with
# --cfg-options model.backbone.init_cfg.checkpoint=<path>.
checkpoint_file = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/'
                   'swin_large_patch4_window12_384_22k_20220412-6580f57d.pth')
model = dict(
    backbone=dict(
        pretrain_img_size=384,
        embed_dims=192,
        window_size=12,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=[
        dict(type='FPN', in_channels=[192, 384, 768, 1536], out_channels=256, act_cfg=None,
             norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
        dict(type='MultiStageMerging', in_channels=[256, 256, 256, 256], out_channels=256,
             kernel_size=1, norm_cfg=dict(type='GN', num_groups=32), act_cfg=None)
    ])
