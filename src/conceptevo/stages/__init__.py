"""The stages of a study, one module each, in the order :mod:`conceptevo.pipeline` runs them.

Every stage has an ``ensure_*(ctx, ...)`` function that takes the command's
:class:`~conceptevo.stages.context.Context` (the config, the workspace, the resolved device
and the seed), reads its inputs from the workspace, and computes and stores its artifact only
when the artifact's stored key differs from the key of its inputs
(:func:`~conceptevo.stages.context.cached`). A stage module imports the algorithms it runs
and the stages before it, never one after it (tests/test_structure.py):

========== ==========================================================================
probe      decode the probe (and held-out) images, fix the image size
train      train the runs with a ``train`` table, read the runs' training logs
stimuli    a stimulus pass per checkpoint (and the external base model's)
space      base space, image embedding, 2-D map, every checkpoint's projection
importance the importance of each neuron for a class between two epochs, reversion
diagnosis  the training-issue flags from the per-epoch space metrics
figures    per-run maps, the receptive fields the dashboard and report draw
evaluation alignment with annotated concepts, annotation-free checks, ranker comparison
========== ==========================================================================
"""

ORDER = ("probe", "train", "stimuli", "space", "importance", "diagnosis", "figures",
         "evaluation")
