"""Evaluation: the project's own evaluators (finding classifier, attribute models, report labeler), metrics and report.

Train the evaluators: ``python -m eval.train_evaluators --data DIR --out runs/evaluators``
Evaluate a model or a generation folder: ``python -m eval.evaluate --model DIR --data DIR --out DIR [--generated DIR]``
"""
