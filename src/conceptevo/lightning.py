"""A PyTorch Lightning callback with the behaviour of :class:`conceptevo.Monitor`.

::

    from conceptevo import Monitor
    from conceptevo.lightning import ConceptEvoCallback

    monitor = Monitor("runs/study", probe="data/train", run="lightning", image_size=64)
    trainer = lightning.Trainer(callbacks=[ConceptEvoCallback(monitor)])

It snapshots the LightningModule (every Conv2d of it by default, named as in
``named_modules()``, e.g. ``model.features.0``) at the start of fitting (epoch 0, the
initialisation) and after every training epoch (epoch = ``current_epoch + 1``), with the
metrics Lightning has collected (``trainer.callback_metrics``). Lightning is an optional
dependency: ``pip install conceptevo[lightning]``.
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError as e:
        raise ImportError("conceptevo.lightning needs PyTorch Lightning: "
                          "pip install 'conceptevo[lightning]'") from e

from .monitor import Monitor


class ConceptEvoCallback(Callback):
    """Snapshot the module being trained into ``monitor`` after every training epoch."""

    def __init__(self, monitor: Monitor, snapshot_initialisation: bool = True):
        super().__init__()
        self.monitor = monitor
        self.snapshot_initialisation = snapshot_initialisation

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.snapshot_initialisation and trainer.current_epoch == 0 \
                and trainer.is_global_zero:
            self.monitor.on_epoch_end(pl_module, 0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1}
        self.monitor.on_epoch_end(pl_module, trainer.current_epoch + 1, metrics)
