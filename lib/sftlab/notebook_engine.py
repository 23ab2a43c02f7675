"""The papermill engine the runner executes stage notebooks with: papermill's own (nbclient), saving the
executed notebook less often.

Papermill writes the whole executed notebook at every cell's start and end (68 writes in one infer stage,
0.1-0.25 s each: the largest fixed cost of running a stage through a notebook). This engine writes it at the
start, then at most every `SAVE_EVERY_S` seconds as cells start and end (and while a long cell runs, as
papermill's autosave does), and at the end, failed or not: the notebook on disk is never more than that
behind, and a stage of many quick cells is written a few times instead of dozens.

    papermill.execute_notebook(source, target, engine_name=ENGINE, ...)   # after register()
"""

from __future__ import annotations

from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

ENGINE = "sftlab"
SAVE_EVERY_S = 10.0


class ThrottledManager(NotebookExecutionManager):
    """Papermill's execution manager, whose saves during execution are skipped within SAVE_EVERY_S of the last."""

    forced = False

    def save(self, **kwargs):
        if self.forced or (self.now() - self.last_save_time).total_seconds() >= SAVE_EVERY_S:
            super().save(**kwargs)

    def notebook_start(self, **kwargs):
        self._forcing(super().notebook_start, **kwargs)

    def notebook_complete(self, **kwargs):
        self._forcing(super().notebook_complete, **kwargs)

    def _forcing(self, step, **kwargs):
        self.forced = True
        try:
            step(**kwargs)
        finally:
            self.forced = False


class ThrottledEngine(NBClientEngine):
    """nbclient execution, as papermill's default engine, with `ThrottledManager` (Engine.execute_notebook's body,
    with the manager class swapped)."""

    @classmethod
    def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                         autosave_cell_every=SAVE_EVERY_S, **kwargs):
        manager = ThrottledManager(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                                   autosave_cell_every=autosave_cell_every)
        manager.notebook_start()
        try:
            cls.execute_managed_notebook(manager, kernel_name, log_output=log_output, **kwargs)
        finally:
            manager.cleanup_pbar()
            manager.notebook_complete()
        return manager.nb


def register() -> str:
    papermill_engines.register(ENGINE, ThrottledEngine)
    return ENGINE
