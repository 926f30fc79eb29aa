_base_ = './ddp_swin_t_2x8_512x512_160k_ade20k.py'
# ImageNet-pretrained backbone. ddpseg never downloads it: fetch the file and pass its local path with
# --cfg-options model.backbone.init_cfg.checkpoint=<path>.
checkpoint_file = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/'
                   'swin_small_patch4_window7_224_20220317-7ba6d6dd.pth')
model = dict(
    backbone=dict(depths=[2, 2, 18, 2], init_cfg=dict(checkpoint=checkpoint_file)))
