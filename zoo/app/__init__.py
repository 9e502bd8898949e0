"""The ``ppzoo`` application: the command line (:mod:`zoo.app.cli`), the checks and the fit of one
model into a run folder (:mod:`zoo.app.jobs`), and the compare job with its report
(:mod:`zoo.app.report`). The only layer that knows both the models (``zoo``) and the engine
(``inference``); neither imports it.
"""
