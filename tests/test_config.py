"""One source per verb's options: the CLI's annotate and eval options are AnnotateConfig /
EvalConfig / APIConfig fields (same default, same help), train's are TrainConfig's, and the
Python functions take the same configs or their fields by name."""

import dataclasses

import pytest
import torch
import typer

from cotdistill.annotate import annotate
from cotdistill.cli import app
from cotdistill.config import AnnotateConfig, EvalConfig
from cotdistill.errors import CotdistillError
from cotdistill.evaluate import evaluate
from cotdistill.models.openai_api import APIConfig

CLI_NAMES = {"field": "fields", "option": "options", "rpm": "requests_per_minute", "tpm": "tokens_per_minute"}
CLI_ONLY = {"run_dir", "status", "model"}  # eval's --model is model or models (STAGE=MODEL)


def _options(verb: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[verb].params}


@pytest.mark.parametrize("verb, config", [("annotate", AnnotateConfig), ("eval", EvalConfig)])
def test_cli_options_are_the_config_fields(verb, config):
    fields = {f.name: f for f in dataclasses.fields(config)} | {
        f.name: f for f in dataclasses.fields(APIConfig) if f.name != "model"}
    options = _options(verb)
    for name, option in options.items():
        if name in CLI_ONLY:
            continue
        field = fields.get(CLI_NAMES.get(name, name))
        assert field is not None, f"{verb} --{name} is no {config.__name__} or APIConfig field"
        assert option.help == field.metadata["help"], name
        if not isinstance(field.default, dict | type(dataclasses.MISSING)) and not option.multiple:
            assert option.default == field.default, name
    missing = set(f.name for f in dataclasses.fields(config)) - {CLI_NAMES.get(n, n) for n in options} - {"api", "models"}
    assert not missing, f"{config.__name__} fields without a CLI option: {missing}"


def test_train_cli_defaults_are_train_config_defaults():
    from cotdistill.train import TrainConfig

    renamed = {"epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size"}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, option in _options("train").items():
        field = renamed.get(name, name)
        if field in defaults and name not in ("report_to",) and defaults[field] is not dataclasses.MISSING:
            assert option.default == defaults[field], name


def test_python_functions_take_a_config_or_its_fields(tmp_path):
    config = AnnotateConfig(task="arith", limit=3)
    assert annotate(tmp_path, config)["new"] == 3
    assert annotate(tmp_path, "arith", limit=4)["new"] == 1  # a task name and fields, as the CLI reads
    with pytest.raises(CotdistillError, match="annotate: unknown setting.*temprature"):
        annotate(tmp_path, "arith", temprature=0.5)
    with pytest.raises(CotdistillError, match="--samples must be >= 1"):
        evaluate(tmp_path, EvalConfig(task="arith"), samples=0)


def test_one_table_turns_a_model_name_into_its_backend_with_that_backends_options(tmp_path, tiny_model):
    from cotdistill.models.backends import LocalOptions, backend, backend_options, load_backend, served

    assert backend("openai:gpt-4o-mini") == "openai" and served("openai:m")
    assert backend("smollm2-135m") == "local" and not served(str(tiny_model))
    assert backend_options("openai:m", {"base_url": "http://localhost:1/v1"}).model == "m"
    assert backend_options("smollm2-135m", {"batch_size": 4}) == LocalOptions(batch_size=4)
    with pytest.raises(CotdistillError, match="unknown local backend option.*base_url"):
        backend_options("smollm2-135m", {"base_url": "http://localhost:1/v1"})
    with pytest.raises(CotdistillError, match="dtype 'int8'"):
        backend_options("smollm2-135m", {"dtype": "int8"})
    with pytest.raises(CotdistillError, match="batch_size must be int"):
        backend_options("smollm2-135m", {"batch_size": "8"})
    with pytest.raises(CotdistillError, match="no stage runs one"):  # not silently ignored
        evaluate(tmp_path, EvalConfig(model=str(tiny_model), api={"base_url": "http://localhost:1/v1"}))
    model = load_backend(str(tiny_model), {"batch_size": 3, "dtype": "float32", "device": "cpu"})
    assert model.batch_size == 3 and model.model.dtype == torch.float32
