"""What every training recipe shares: the one training run that fine-tuning and distillation
build on, and the pieces pre-training uses too.

- `config`: `TrainingConfig`, the settings both recipes' configs extend, and `merged_config`;
- `inputs`: `Inputs` (train stream, validation batches, the task), `given_train_stream`,
  `validation_batches`, `check_same_task`, `dataset_identity`;
- `accumulation`: micro-batches per update (`accumulation_and_micro_batch`) and the strategy
  (`strategy_for`); `micro_batch`: the memory plan behind "auto";
- `models`: a new zero head (`with_new_head`), dtype policies, copies for a strategy;
- `run`: `TrainingRun`, resume-or-build and fit; `segments`: `model.fit` one epoch per
  validation; `callbacks`: the run's callbacks;
- `checkpoints`: last/best checkpoints, `progress.json`, the NaN guard; `run_settings`: a run's
  identity and the refusal of another run's folder; `run_lock`: one run per folder;
- `signals`: the one stop-signal recorder; `interruption`: `TrainingInterruptedError`;
- `file_errors`, `optimizers`.

Example:
    >>> from bit_tf.training.run import TrainingRun
    >>> run = TrainingRun(config, settings, total_steps=500, validation_every=50, accumulation=1)
    >>> model = run.resume_or_build(strategy, build=new_model)
    >>> history = run.fit(model, inputs)
"""
