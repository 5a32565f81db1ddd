"""Every default is written once, in conf/: the typed schema and the training recipe hold types
only, and the classes that still carry defaults for building them in code (ModelSpec,
Evaluation) agree with the composed config value for value."""

from __future__ import annotations

import dataclasses

from omegaconf import MISSING, OmegaConf

from flowsweep.config import Config
from flowsweep.config.compose import compose_config
from flowsweep.model import ModelSpec
from flowsweep.search import Evaluation
from flowsweep.training import Recipe


def _valued_fields(cls: type, prefix: str = "") -> list[str]:
    """The fields of schema dataclass ``cls`` (and its nested ones) that hold a value, not a type."""
    valued = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            nested = f.default_factory()
            if dataclasses.is_dataclass(nested):
                valued += _valued_fields(type(nested), f"{prefix}{f.name}.")
                continue
            valued.append(prefix + f.name)
        elif f.default is not MISSING:
            valued.append(prefix + f.name)
    return valued


def test_the_schema_holds_types_and_conf_holds_every_value():
    assert _valued_fields(Config) == []
    cfg = compose_config([])
    assert OmegaConf.missing_keys(cfg) == set()  # and conf gives every one of them a value


def test_every_dataset_composes_with_every_value_given():
    for option in ("magic", "turbine", "sonar", "yeast", "synthetic_pairs"):
        assert OmegaConf.missing_keys(compose_config([f"dataset={option}"]).dataset) == set(), option
    assert OmegaConf.missing_keys(compose_config(["dataset=csv", "dataset.path=x.csv"]).dataset) == set()


def test_the_training_recipe_holds_types_and_the_config_its_values():
    assert [f.name for f in dataclasses.fields(Recipe) if f.default is not dataclasses.MISSING] == []
    train = compose_config([]).train
    recipe = Recipe.from_config(train)
    assert (recipe.optimizer, recipe.schedule) == ("adam", "cosine")  # what a job trains
    assert dataclasses.asdict(recipe) == {k: v for k, v in OmegaConf.to_container(train).items()
                                          if k in dataclasses.asdict(recipe)}


def test_a_model_spec_built_in_code_is_the_one_a_job_builds():
    cfg = compose_config([])
    assert ModelSpec(10, 5, 4) == ModelSpec.from_config(cfg.model, 10, 5, 4)


def test_an_evaluation_built_in_code_is_the_paper_evaluation_of_conf():
    cfg = compose_config(["search=evolutionary"])  # Algorithm 1: search/evaluation=paper
    assert Evaluation() == Evaluation.from_config(cfg.search.evaluation)
