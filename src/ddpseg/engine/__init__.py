"""Training engine: ``trainer.train`` (the loop), ``optimizer.build_optimizer``, ``lr_schedule.PolyLrSchedule``,
``checkpoint`` (save/load/resume files), ``distributed`` (torchrun set-up), ``rng`` (seeding, RNG state),
``logging.TrainLogger``, ``settings`` (the config sections training reads)."""
