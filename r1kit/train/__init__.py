"""Training stages and the infrastructure they share.

- ``cost``: tokens, FLOPs, device-hours, dollars and MFU, counted the way DeepSeek reports them.
- ``checkpoint``: atomic, resumable checkpoints (model, optimizer, scheduler, RNG, data position).
- ``log``: metrics.jsonl (+ TensorBoard when installed), rich progress bars, metric plots.
- ``sections``: the config sections several stages share ([model], [tokenizer], [val], ...) and the
  dtype vocabulary.
- ``pretrain``, ``sft``: the supervised stages, each with ``run(config) -> RunResult``.

Nothing is imported here so that ``import r1kit.train.cost`` stays cheap.
"""
