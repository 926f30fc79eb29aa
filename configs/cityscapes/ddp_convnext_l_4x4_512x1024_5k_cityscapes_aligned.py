_base_ = './ddp_convnext_t_4x4_512x1024_5k_cityscapes_aligned.py'
# Self-aligned fine-tuning of the published 160k model. ddpseg never downloads it: fetch the file and
# pass its local path with --cfg-options load_from=<path>.
load_from = ('https://huggingface.co/yfji/DDP-Weight/resolve/main/'
             'ddp_convnext_l_4x4_512x1024_160k_cityscapes.pth')
model = dict(
    backbone=dict(arch='large'),
    neck=[
        dict(type='FPN', in_channels=[192, 384, 768, 1536], out_channels=256, act_cfg=None,
             norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
        dict(type='MultiStageMerging', in_channels=[256, 256, 256, 256], out_channels=256,
             kernel_size=1, norm_cfg=dict(type='GN', num_groups=32), act_cfg=None)
    ])
