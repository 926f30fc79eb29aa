_base_ = [
    '../_base_/models/ddp_convnext.py',
    '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py'
]
# The original builds ConvNeXt from mmcls; ddpseg has its own ConvNeXt and ignores this setting.
custom_imports = dict(imports='mmcls.models', allow_failed_imports=False)
# ImageNet-pretrained backbone. ddpseg never downloads it: fetch the file and pass its local path with
# --cfg-options model.backbone.init_cfg.checkpoint=<path>.
checkpoint_file = ('https://download.openmmlab.com/mmclassification/v0/convnext/downstream/'
                   'convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth')
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint_file)))
data = dict(samples_per_gpu=4, workers_per_gpu=4)
optimizer = dict(
    _delete_=True, type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01,
    paramwise_cfg=dict(custom_keys={
        'pos_block': dict(decay_mult=0.), 'norm': dict(decay_mult=0.), 'head': dict(lr_mult=1.)}))
lr_config = dict(
    _delete_=True, policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6,
    power=1.0, min_lr=0.0, by_epoch=False)
find_unused_parameters = True
evaluation = dict(interval=16000, metric='mIoU', save_best='mIoU')
