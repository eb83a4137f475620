"""The nightly distillation job: a Ray Train run that makes the small encoders and decoders.

``python -m jobs.distill --teacher URI|torchvision-vgg19 --data URI --storage URI --width W``
(or ``ultrastyle distill ...``) distils, for every level asked, a narrower student from the
teacher in one Ray Train run, evaluates it on held-out images and, with ``--publish``, writes
a bundle that ``stylize --weights`` loads and promotes it to ``<publish>/latest`` when it has
every level the current one has and is no worse on each. One module per job:

- :mod:`jobs.distill.cli`: the command line and exit statuses;
- :mod:`jobs.distill.job`: one run on the driver, from arguments to run folder;
- :mod:`jobs.distill.resources`: what each worker reserves, so Ray Data keeps a CPU;
- :mod:`jobs.distill.data`: training and held-out images, crops, the Ray Data pipeline;
- :mod:`jobs.distill.teachers`: torchvision's VGG-19 or a weights URI as teacher;
- :mod:`jobs.distill.train`: the stages, the Ray Train worker loop and its launcher;
- :mod:`jobs.distill.evaluate`: held-out reconstruction PSNR per level;
- :mod:`jobs.distill.figures`: the loss-curve and reconstruction PNGs;
- :mod:`jobs.distill.publish`: the bundle and the promotion rule (format: :mod:`models.bundle`).

The losses and the pruning are in :mod:`models.losses` and :mod:`models.pruning`.
"""

from jobs.distill.cli import build_parser, main

__all__ = ["build_parser", "main"]
