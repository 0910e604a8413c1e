"""Evaluation: the OSFGIR protocol, survey-method comparisons, classification and few-shot evaluation, reports
(the metrics themselves are `fgia.metrics`)."""
