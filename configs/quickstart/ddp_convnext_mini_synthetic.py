# A tiny DDP (the model of tests/fixtures/mini_convnext_config.py) on a small synthetic dataset in the
# Cityscapes layout, for the quickstart and for tests: trains in minutes on a CPU.
_base_ = [
    '../_base_/models/ddp_convnext.py',
    '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py'
]
model = dict(
    backbone=dict(
        # A custom ConvNeXt size instead of the base's arch='tiny'.
        arch=dict(_delete_=True, depths=[1, 1, 2, 1], channels=[32, 64, 128, 256]),
        init_cfg=None),
    neck=[
        dict(type='FPN', in_channels=[32, 64, 128, 256], out_channels=64, act_cfg=None,
             norm_cfg=dict(type='GN', num_groups=8), num_outs=4),
        dict(type='MultiStageMerging', in_channels=[64, 64, 64, 64], out_channels=64,
             kernel_size=1, norm_cfg=dict(type='GN', num_groups=8), act_cfg=None)
    ],
    auxiliary_head=dict(in_channels=64, channels=64),
    decode_head=dict(
        in_channels=[64],
        channels=64,
        encoder=dict(
            num_layers=2,
            transformerlayers=dict(
                attn_cfgs=dict(embed_dims=64, num_heads=4),
                ffn_cfgs=dict(embed_dims=64, feedforward_channels=128))),
        positional_encoding=dict(num_feats=32)))

# Variables of the base files are not visible here (each file runs on its own), so the pipelines are
# restated at the small size: resize towards 256x512 (h x w) at a random scale of 0.5-2, crop 128x256.
data_root = 'data/synthetic_cityscapes/'
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (128, 256)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', img_scale=(512, 256), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(512, 256),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ]),
]
data = dict(
    samples_per_gpu=2,
    workers_per_gpu=0,
    train=dict(data_root=data_root, pipeline=train_pipeline),
    val=dict(data_root=data_root, pipeline=test_pipeline),
    test=dict(data_root=data_root, pipeline=test_pipeline))

optimizer = dict(
    _delete_=True,
    type='AdamW',
    lr=0.0006,
    betas=(0.9, 0.999),
    weight_decay=0.01,
    paramwise_cfg=dict(
        custom_keys={
            'pos_block': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'head': dict(lr_mult=1.)
        }))
lr_config = dict(
    _delete_=True,
    policy='poly',
    warmup='linear',
    warmup_iters=50,
    warmup_ratio=1e-6,
    power=1.0,
    min_lr=0.0,
    by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=800)
checkpoint_config = dict(by_epoch=False, interval=200, max_keep_ckpts=2)
evaluation = dict(interval=200, metric='mIoU', save_best='mIoU')
log_config = dict(interval=10)
cudnn_benchmark = False
find_unused_parameters = True
