"""What every job shares; the layer between model/data and the jobs.

The stack is one-way (tests/test_architecture.py walks the imports):

  errors, log_filters
  model/           the MAE (linen), masking, loss
  data/            Grain input pipeline, sources, transforms
  core/            this package
  train/, evaluate/  the jobs: pretraining; linear probe, fine-tuning, k-NN
  main, aot, convert, visualize; benchmarks/ outside the package

Modules, bottom to top:
  sharding.py       mesh, logical-axis rules -> NamedSharding
  checkpointing.py  orbax managers, saves that always complete, metadata
  metrics.py        metrics.jsonl and TensorBoard (tensorboardX)
  optim.py          the reference's AdamW and warm-up + cosine schedule
  accumulate.py     gradient accumulation by scanning micro-batches
  nonfinite.py      a non-finite step never reaches the parameters
  preemption.py     SIGTERM / sync point -> save, exit 75; Ctrl-C -> save, exit 130
  state.py          TrainState, its shardings, the mesh context
  plan.py           config checks before compiling; pretraining's plan
  pretrained.py     what init_from names: one resolver, one layout rule
  train_step.py     THE jitted sharded train step (pretrain, aot, benchmarks)
  batches.py        host batches -> global arrays; labelled passes over a split
  accuracy.py       top-1 / top-5 as sums
  knn.py            the weighted k-NN classifier and pretraining's monitor
  progress.py       tqdm bar or plain lines
  workdir.py        writable check, one experiment per workdir, run info
  loop.py           THE step loop (pretraining, probe, fine-tuning), with hooks
  command_line.py   --config mistakes in one line (main and aot parse with it)
"""
