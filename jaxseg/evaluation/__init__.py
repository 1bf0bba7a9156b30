"""Evaluating a trained run: metrics on a split (whole images or tile by tile with TTA), the
registered evaluators, and what evaluate.py writes."""

from jaxseg.evaluation.evaluators import EVALUATORS, evaluator_names, register_evaluator

__all__ = ["EVALUATORS", "evaluator_names", "register_evaluator"]
