"""The application: one job from a composed config (:mod:`.run`), its entry with error handling
(:mod:`.task`), Hydra's callbacks of a sweep (:mod:`.callbacks`) and Ctrl-C (:mod:`.interrupt`).

The top layer: nothing else in flowsweep imports it.
"""
