"""Evaluation: corpus WER/CER, text normalisation, reports and plots."""
