_base_ = [
    '../_base_/models/ddp_convnext.py',
    '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_5k.py'
]
# The original builds ConvNeXt from mmcls; ddpseg has its own ConvNeXt and ignores this setting.
custom_imports = dict(imports='mmcls.models', allow_failed_imports=False)
# Self-aligned fine-tuning of the published 160k model. ddpseg never downloads it: fetch the file and
# pass its local path with --cfg-options load_from=<path>.
load_from = ('https://huggingface.co/yfji/DDP-Weight/resolve/main/'
             'ddp_convnext_t_4x4_512x1024_160k_cityscapes.pth')
model = dict(type='SelfAlignedDDP', timesteps=10, backbone=dict(init_cfg=None))
data = dict(samples_per_gpu=4, workers_per_gpu=4)
optimizer = dict(
    _delete_=True, type='AdamW', lr=0.000006, betas=(0.9, 0.999), weight_decay=0.01,
    paramwise_cfg=dict(custom_keys={
        'pos_block': dict(decay_mult=0.), 'norm': dict(decay_mult=0.), 'head': dict(lr_mult=1.)}))
lr_config = dict(
    _delete_=True, policy='poly', warmup='linear', warmup_iters=1500, warmup_ratio=1e-6,
    power=1.0, min_lr=0.0, by_epoch=False)
find_unused_parameters = True
evaluation = dict(interval=500, metric='mIoU', save_best='mIoU')
