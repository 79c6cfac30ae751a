"""Evaluation of pretrained encoders: linear probe, fine-tuning, k-NN.

Jobs (dispatched by `mae_jax.main` on `config.job`; configs in configs/):
  linprobe.py     run_linear_probe(config, workdir)  frozen encoder, BN + Linear, LARS
  finetune.py     run_finetune(config, workdir)      whole ViT, AdamW + layer decay, mixup
  knn_job.py      run_knn(config, workdir)           cosine k-NN on frozen features

Pieces:
  plan.py             config checks before compiling (EvalPlan)
  encoders.py         the frozen feature source: checkpoint, random init, raw pixels
  models.py           ProbeHead, ViTClassifier (the pretraining Encoder + a head)
  lars.py             LARS as the reference
  layer_decay.py      fine-tuning AdamW with layer-wise lr decay
  mixup.py            Mixup / CutMix / label smoothing on the device
  job.py              the start of a job (plan, mesh, workdir), accuracy over a
                      pass, results.json

Shared with pretraining, in mae_jax.core: the step loop, batches, the k-NN
classifier (core/knn.py), accuracy sums, the workdir checks.
"""
