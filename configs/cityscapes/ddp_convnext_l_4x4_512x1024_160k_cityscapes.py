_base_ = './ddp_convnext_t_4x4_512x1024_160k_cityscapes.py'
# ImageNet-pretrained backbone. ddpseg never downloads it: fetch the file and pass its local path with
# --cfg-options model.backbone.init_cfg.checkpoint=<path>.
checkpoint_file = ('https://download.openmmlab.com/mmclassification/v0/convnext/downstream/'
                   'convnext-large_3rdparty_in21k_20220301-e6e0ea0a.pth')
model = dict(
    backbone=dict(arch='large', init_cfg=dict(checkpoint=checkpoint_file)),
    neck=[
        dict(type='FPN', in_channels=[192, 384, 768, 1536], out_channels=256, act_cfg=None,
             norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
        dict(type='MultiStageMerging', in_channels=[256, 256, 256, 256], out_channels=256,
             kernel_size=1, norm_cfg=dict(type='GN', num_groups=32), act_cfg=None)
    ])
