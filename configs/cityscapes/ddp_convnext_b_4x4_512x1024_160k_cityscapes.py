_base_ = './ddp_convnext_t_4x4_512x1024_160k_cityscapes.py'
# ImageNet-pretrained backbone. ddpseg never downloads it: fetch the file and pass its local path with
# --cfg-options model.backbone.init_cfg.checkpoint=<path>.
checkpoint_file = ('https://download.openmmlab.com/mmclassification/v0/convnext/downstream/'
                   'convnext-base_3rdparty_32xb128-noema_in1k_20220301-2a0ee547.pth')
model = dict(
    backbone=dict(arch='base', init_cfg=dict(checkpoint=checkpoint_file)),
    neck=[
        dict(type='FPN', in_channels=[128, 256, 512, 1024], out_channels=256, act_cfg=None,
             norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
        dict(type='MultiStageMerging', in_channels=[256, 256, 256, 256], out_channels=256,
             kernel_size=1, norm_cfg=dict(type='GN', num_groups=32), act_cfg=None)
    ])
