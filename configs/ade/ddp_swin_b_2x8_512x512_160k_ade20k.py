_base_ = './ddp_swin_t_2x8_512x512_160k_ade20k.py'
# ImageNet-pretrained backbone. ddpseg never downloads it: fetch the file and pass its local path with
# --cfg-options model.backbone.init_cfg.checkpoint=<path>.
checkpoint_file = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/'
                   'swin_base_patch4_window7_224_20220317-e9b98025.pth')
model = dict(
    backbone=dict(
        # As published: window 12 and size 384 with a checkpoint trained at window 7 and size 224.
        pretrain_img_size=384,
        embed_dims=128,
        window_size=12,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=[
        dict(type='FPN', in_channels=[128, 256, 512, 1024], out_channels=256, act_cfg=None,
             norm_cfg=dict(type='GN', num_groups=32), num_outs=4),
        dict(type='MultiStageMerging', in_channels=[256, 256, 256, 256], out_channels=256,
             kernel_size=1, norm_cfg=dict(type='GN', num_groups=32), act_cfg=None)
    ])
