"""A KV-cache stand-in for scripted models in the evaluation tests (tests/test_evaluate.py,
tests/test_eval_core.py): it keeps each row's token history, so a scripted model can read it."""


class HistoryCache:
    """A KV-cache stand-in that keeps each row's token history (reorder/truncate like the real one)."""

    def __init__(self, batch: int):
        self.rows: list[list[int]] = [[] for _ in range(batch)]
        self.length = 0

    def reorder(self, index):
        self.rows = [list(self.rows[i]) for i in index.tolist()]

    def truncate(self, length):
        self.rows = [r[:length] for r in self.rows]
        self.length = length
