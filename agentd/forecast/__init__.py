"""Tool-call memory forecasting: signatures, history, predictors and the forecaster.

Pure code (time is passed in); the only I/O is the SQLite history store.
`DEFAULT_PREDICTOR` names the predictor the daemon uses; the benchmark
(`bench/forecast.py`) reports it as its `default`.
"""

from .censoring import censored
from .forecaster import FLOOR_BYTES, Forecaster
from .history import DEFAULT_PATH, HistoryError, HistoryFull, HistoryReadOnly, HistoryStore
from .model import Forecast, LiveForecast, ToolCallRecord
from .predictors import (DEFAULT_PREDICTOR, DEFAULT_PRIORS, PREDICTORS, PredictorError,
                         make_predictor, register)
from .signature import Signature, signature

__all__ = [
    "DEFAULT_PATH", "DEFAULT_PREDICTOR", "DEFAULT_PRIORS", "FLOOR_BYTES", "PREDICTORS",
    "Forecast", "Forecaster", "HistoryError", "HistoryFull", "HistoryReadOnly", "HistoryStore",
    "LiveForecast", "PredictorError", "Signature", "ToolCallRecord", "make_predictor",
    "register", "signature", "censored",
]
