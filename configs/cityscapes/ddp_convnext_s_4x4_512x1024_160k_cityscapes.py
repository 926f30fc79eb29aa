_base_ = './ddp_convnext_t_4x4_512x1024_160k_cityscapes.py'
# ImageNet-pretrained backbone. ddpseg never downloads it: fetch the file and pass its local path with
# --cfg-options model.backbone.init_cfg.checkpoint=<path>.
checkpoint_file = ('https://download.openmmlab.com/mmclassification/v0/convnext/downstream/'
                   'convnext-small_3rdparty_32xb128-noema_in1k_20220301-303e75e3.pth')
model = dict(
    backbone=dict(
        arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint_file)))
