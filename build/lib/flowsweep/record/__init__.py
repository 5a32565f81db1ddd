"""The record of a job: the tracking store (:mod:`.tracking`), MLflow writes off the training
thread (:mod:`.mlflow_writer`), the job's runs (:mod:`.run_group`, :mod:`.runinfo`), resuming a
finished job (:mod:`.resume`), what is logged (:mod:`.results`), figures (:mod:`.plots`) and the
job's closing lines (:mod:`.summary`).

It sits above the method (data, structure, model, training, search) and below the application.
"""
