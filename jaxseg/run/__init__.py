"""The one place a config becomes a run (`build_run`) and a workdir a trained run
(`load_run`), below both the training loop (jaxseg/train/) and inference."""

from jaxseg.run.build import build_model, build_run
from jaxseg.run.built import Run
from jaxseg.run.trained import TrainedRun, load_run, predict_probabilities

__all__ = ["Run", "TrainedRun", "build_model", "build_run", "load_run", "predict_probabilities"]
